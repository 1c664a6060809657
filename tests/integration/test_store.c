/* test_store.c - the event store (event_store/store.h) against a real
 * redis-server, one private server per test: expected-version conflicts and
 * duplicates write nothing, batches are atomic, the bus and the histories
 * always agree, concurrent writers get seq 1..n, every saga shape replays,
 * pages walk the bus, retention trims only the bus, and a flushed script
 * cache is recovered. */
#include <criterion/criterion.h>

#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/names.h"
#include "common/redis.h"
#include "event_store/deadletter.h"
#include "event_store/store.h"
#include "tests/support/proc.h"
#include "tests/support/redis_fixture.h"

static tf_redis R;
static redisContext *C;
static es_store *S;

static void setup(void)
{
    cr_assert_eq(tf_redis_start(&R, NULL), 0, "cannot start redis-server");
    C = tf_redis_connect(&R);
    char err[256] = "";
    S = es_store_new(C, NULL, err, sizeof err);
    cr_assert_not_null(S, "es_store_new: %s", err);
}

static void teardown(void)
{
    es_store_free(S);
    S = NULL;
    if (C)
        redisFree(C);
    C = NULL;
    tf_redis_stop(&R);
}

TestSuite(store, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers ----------------------------------------------------------- */

/* Runs a command that must succeed; returns the reply (caller frees). */
static redisReply *cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(C, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "redis: %s", C->errstr);
    cr_assert_neq(r->type, REDIS_REPLY_ERROR, "redis: %s", r->str);
    return r;
}

static long long bus_len(void)
{
    redisReply *r = cmd("XLEN %s", es_store_bus(S));
    long long v = cm_reply_ll(r, -1);
    freeReplyObject(r);
    return v;
}

static long long hist_len(const char *agg_id)
{
    char key[512];
    es_history_key("checkout", agg_id, key, sizeof key);
    redisReply *r = cmd("LLEN %s", key);
    long long v = cm_reply_ll(r, -1);
    freeReplyObject(r);
    return v;
}

/* Serialises a reply tree into out, byte-exact. */
static void dump_reply(const redisReply *r, cm_buf *out)
{
    if (r->type == REDIS_REPLY_ARRAY) {
        cm_buf_putc(out, '[');
        for (size_t i = 0; i < r->elements; i++)
            dump_reply(r->element[i], out);
        cm_buf_putc(out, ']');
    } else if (r->type == REDIS_REPLY_INTEGER) {
        cm_buf_printf(out, "%lld,", r->integer);
    } else if (r->type == REDIS_REPLY_NIL) {
        cm_buf_puts(out, "nil,");
    } else {
        cm_buf_put_json_str(out, r->str, r->len);
        cm_buf_putc(out, ',');
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every key, sorted, with its full contents (lists and streams are all the
 * store writes): two dumps are equal iff nothing was written in between.
 * Caller frees. */
static char *dump_keyspace(void)
{
    cm_buf out = CM_BUF_INIT;
    redisReply *keys = cmd("KEYS *");
    size_t n = keys->elements;
    char **names = calloc(n ? n : 1, sizeof *names);
    for (size_t i = 0; i < n; i++)
        names[i] = strdup(keys->element[i]->str);
    freeReplyObject(keys);
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        redisReply *t = cmd("TYPE %s", names[i]);
        cm_buf_printf(&out, "%s:%s=", names[i], t->str);
        redisReply *v = !strcmp(t->str, "list")     ? cmd("LRANGE %s 0 -1", names[i])
                        : !strcmp(t->str, "stream") ? cmd("XRANGE %s - +", names[i])
                                                    : cmd("DUMP %s", names[i]);
        dump_reply(v, &out);
        cm_buf_putc(&out, '\n');
        freeReplyObject(v);
        freeReplyObject(t);
        free(names[i]);
    }
    free(names);
    if (!out.data)
        cm_buf_puts(&out, "");
    return cm_buf_steal(&out);
}

/* Appends one event of type to checkout agg_id; returns the store's rc. */
static int append1(const char *agg_id, const char *type, const char *event_id, const char *cause,
                   int64_t expected, json_t *data, es_append_res *res)
{
    es_new_event ev = {.event_id = event_id, .type = type, .causation_id = cause, .data = data};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = agg_id, .producer = "test",
                         .expected_version = expected, .events = &ev, .n = 1};
    int rc = es_append(S, &req, res);
    json_decref(data);
    return rc;
}

/* As append1, asserting success at the expected seq; returns nothing. */
static void must_append(const char *agg_id, const char *type, const char *event_id, int64_t expected,
                        json_t *data)
{
    es_append_res res;
    int rc = append1(agg_id, type, event_id, NULL, expected, data, &res);
    cr_assert_eq(rc, ES_OK, "append %s to %s: %d %s", type, agg_id, rc, es_store_errstr(S));
    cr_assert_not(res.duplicate);
    if (expected >= 0)
        cr_assert_eq(res.pos[0].seq, expected + 1);
}

/* ---- expected version and idempotency ---------------------------------- */

Test(store, batched_append_checks_each_request_on_its_own)
{
    const char *dup_id = "01900000-0000-7000-8000-0000000000d1";
    must_append("b-dup", "CheckoutInitiated", dup_id, 0, json_object());
    must_append("b-conf", "CheckoutInitiated", NULL, 0, json_object());
    long long bus0 = bus_len();
    es_new_event e_new[2] = {{.type = "CheckoutInitiated"}, {.type = "StockReserved"}};
    es_new_event e_dup = {.event_id = dup_id, .type = "CheckoutInitiated"};
    es_new_event e_conf = {.type = "StockReserved"};
    es_append_req reqs[3] = {
        {.aggregate = "checkout", .aggregate_id = "b-new", .producer = "test", .expected_version = 0,
         .events = e_new, .n = 2},
        {.aggregate = "checkout", .aggregate_id = "b-dup", .producer = "test", .expected_version = 0,
         .events = &e_dup, .n = 1},
        {.aggregate = "checkout", .aggregate_id = "b-conf", .producer = "test", .expected_version = 5,
         .events = &e_conf, .n = 1},
    };
    es_append_res res[3];
    int rcs[3];
    cr_assert_eq(es_append_batch(S, reqs, 3, res, rcs), ES_OK, "%s", es_store_errstr(S));
    cr_expect_eq(rcs[0], ES_OK);
    cr_expect_not(res[0].duplicate);
    cr_expect_eq(res[0].pos[1].seq, 2);
    cr_expect_eq(rcs[1], ES_OK);
    cr_expect(res[1].duplicate, "an id already stored is a duplicate, as es_append says");
    cr_expect_eq(res[1].pos[0].seq, 1);
    cr_expect_eq(rcs[2], ES_ECONFLICT);
    cr_expect_eq(res[2].version, 1);
    cr_expect_eq(bus_len(), bus0 + 2, "only the new checkout's two events were written");
    cr_expect_eq(hist_len("b-new"), 2);
    cr_expect_eq(hist_len("b-dup"), 1);
    cr_expect_eq(hist_len("b-conf"), 1);
    cr_expect_eq(es_append_batch(S, reqs, 0, res, rcs), ES_EINVAL);
}

Test(store, append_with_stale_version_writes_nothing)
{
    must_append("co-1", "CheckoutInitiated", NULL, 0, json_pack("{s:s}", "client_id", "c1"));
    must_append("co-1", "StockReserved", NULL, 1, json_pack("{s:s}", "client_id", "c1"));
    char *before = dump_keyspace();

    const int64_t stale[] = {0, 1, 3, 100};
    for (size_t i = 0; i < sizeof stale / sizeof stale[0]; i++) {
        es_append_res res;
        int rc = append1("co-1", "CheckoutTimedOut", NULL, NULL, stale[i], json_pack("{s:i}", "after_ms", 5), &res);
        cr_assert_eq(rc, ES_ECONFLICT, "expected %lld: rc %d", (long long)stale[i], rc);
        cr_assert_eq(res.version, 2, "the conflict reports the current version");
        cr_assert(strstr(es_store_errstr(S), "conflict") != NULL, "%s", es_store_errstr(S));
    }
    /* a batch with a stale version writes none of its events either */
    es_new_event evs[2] = {{.type = "OrderCreated"}, {.type = "CheckoutSucceeded"}};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = "co-1", .producer = "test",
                         .expected_version = 1, .events = evs, .n = 2};
    es_append_res res;
    cr_assert_eq(es_append(S, &req, &res), ES_ECONFLICT);

    char *after = dump_keyspace();
    cr_assert_str_eq(after, before, "a conflicting append changed Redis");
    cr_assert_eq(bus_len(), 2);
    cr_assert_eq(hist_len("co-1"), 2);
    free(before);
    free(after);

    /* the right version still goes through */
    must_append("co-1", "CheckoutTimedOut", NULL, 2, json_pack("{s:i}", "after_ms", 5));
    cr_assert_eq(bus_len(), 3);
}

Test(store, duplicate_event_id_writes_nothing_and_returns_original_position)
{
    char eid[37];
    cm_uuid7(eid);
    must_append("co-2", "CheckoutInitiated", NULL, 0, json_pack("{s:s}", "client_id", "c2"));
    es_append_res first;
    cr_assert_eq(append1("co-2", "StockReserved", eid, NULL, 1, json_pack("{}"), &first), ES_OK);
    cr_assert_not(first.duplicate);
    cr_assert_eq(first.pos[0].seq, 2);
    cr_assert_str_eq(first.pos[0].event_id, eid);
    must_append("co-2", "OrderCreated", NULL, 2, json_pack("{s:s}", "order_id", "o2"));
    char *before = dump_keyspace();

    /* the same id again: with the version it had, a stale one, any version,
     * and even another type and data (the id is the idempotency key) */
    const int64_t versions[] = {1, 3, 0, ES_ANY_VERSION};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        es_append_res res;
        int rc = append1("co-2", i == 3 ? "CheckoutFailed" : "StockReserved", eid, NULL, versions[i],
                         json_pack("{s:i}", "attempt", (int)i), &res);
        cr_assert_eq(rc, ES_OK, "duplicate with version %lld: rc %d %s", (long long)versions[i], rc,
                     es_store_errstr(S));
        cr_assert(res.duplicate, "a stored event id is reported as a duplicate");
        cr_assert_eq(res.pos[0].seq, 2, "the original seq");
        cr_assert_str_eq(res.pos[0].entry_id, first.pos[0].entry_id, "the original bus entry");
        cr_assert_str_eq(res.pos[0].event_id, eid);
        cr_assert_eq(res.version, 3);
    }
    char *after = dump_keyspace();
    cr_assert_str_eq(after, before, "a duplicate append changed Redis");
    free(before);
    free(after);

    /* a duplicate batch returns every original position */
    char b1[37], b2[37];
    cm_uuid7(b1);
    cm_uuid7(b2);
    es_new_event evs[2] = {{.event_id = b1, .type = "StockReleased"}, {.event_id = b2, .type = "CheckoutFailed"}};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = "co-2", .producer = "test",
                         .expected_version = 3, .events = evs, .n = 2};
    es_append_res r1, r2;
    cr_assert_eq(es_append(S, &req, &r1), ES_OK);
    cr_assert_eq(es_append(S, &req, &r2), ES_OK);
    cr_assert(r2.duplicate);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(r2.pos[i].seq, r1.pos[i].seq);
        cr_assert_str_eq(r2.pos[i].entry_id, r1.pos[i].entry_id);
    }
    cr_assert_eq(bus_len(), 5);
    cr_assert_eq(hist_len("co-2"), 5);
}

Test(store, batch_append_is_atomic_with_consecutive_seqs)
{
    must_append("co-3", "CheckoutInitiated", NULL, 0, json_pack("{s:s}", "client_id", "c3"));
    json_t *d1 = json_pack("{s:s}", "order_id", "o3");
    json_t *d2 = json_pack("{s:s}", "order_id", "o3");
    es_new_event evs[2] = {{.type = "OrderCreated", .data = d1}, {.type = "CheckoutSucceeded", .data = d2}};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = "co-3", .producer = "order-creation",
                         .expected_version = 1, .events = evs, .n = 2};
    es_append_res res;
    cr_assert_eq(es_append(S, &req, &res), ES_OK, "%s", es_store_errstr(S));
    cr_assert_eq(res.version, 3);
    cr_assert_eq(res.pos[0].seq, 2);
    cr_assert_eq(res.pos[1].seq, 3);
    cr_assert(cm_uuid_valid(res.pos[0].event_id) && cm_uuid_valid(res.pos[1].event_id));

    /* both on the bus, in order, right after each other */
    redisReply *r = cmd("XRANGE %s - +", es_store_bus(S));
    cr_assert_eq(r->elements, 3);
    cr_assert_str_eq(r->element[1]->element[0]->str, res.pos[0].entry_id);
    cr_assert_str_eq(r->element[2]->element[0]->str, res.pos[1].entry_id);
    freeReplyObject(r);

    es_event **h;
    size_t n;
    cr_assert_eq(es_history_read(S, "checkout", "co-3", &h, &n), ES_OK);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(h[1]->type, "OrderCreated");
    cr_assert_str_eq(h[2]->type, "CheckoutSucceeded");
    cr_assert_eq(h[1]->seq, 2);
    cr_assert_eq(h[2]->seq, 3);
    cr_assert_str_eq(h[1]->event_id, res.pos[0].event_id);
    cr_assert_str_eq(h[2]->entry_id, res.pos[1].entry_id);
    cr_assert_str_eq(h[2]->producer, "order-creation");
    es_events_free(h, n);
    json_decref(d1);
    json_decref(d2);
}

Test(store, invalid_append_is_refused_and_writes_nothing)
{
    char *before = dump_keyspace();
    json_t *arr = json_pack("[i]", 1);
    es_new_event bad[] = {
        {.type = NULL},
        {.type = ""},
        {.type = "Has\nNewline"},
        {.type = "StockReserved", .event_id = "not-a-uuid"},
        {.type = "StockReserved", .causation_id = ""},
        {.type = "StockReserved", .data = arr},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        es_append_req req = {.aggregate = "checkout", .aggregate_id = "co-x", .producer = "test",
                             .expected_version = ES_ANY_VERSION, .events = &bad[i], .n = 1};
        es_append_res res;
        cr_assert_eq(es_append(S, &req, &res), ES_EINVAL, "bad event %zu accepted", i);
    }
    es_new_event ok = {.type = "StockReserved"};
    es_append_req reqs[] = {
        {.aggregate = "checkout", .aggregate_id = "", .producer = "t", .events = &ok, .n = 1},
        {.aggregate = "checkout", .aggregate_id = "co-x", .producer = NULL, .events = &ok, .n = 1},
        {.aggregate = "checkout", .aggregate_id = "co-x", .producer = "t", .events = &ok, .n = 0},
        {.aggregate = "checkout", .aggregate_id = "co-x", .producer = "t", .events = &ok, .n = ES_MAX_BATCH + 1},
    };
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        es_append_res res;
        cr_assert_eq(es_append(S, &reqs[i], &res), ES_EINVAL, "bad request %zu accepted", i);
    }
    char *after = dump_keyspace();
    cr_assert_str_eq(after, before);
    free(before);
    free(after);
    json_decref(arr);
}

/* ---- bus and history agree --------------------------------------------- */

/* Splits a history element "event_id\nbus_id\ntype\nts\npayload". */
static void split_history(const redisReply *el, char f[4][128], const char **payload, size_t *plen)
{
    const char *p = el->str, *end = el->str + el->len;
    for (int i = 0; i < 4; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        cr_assert_not_null(nl, "malformed history element");
        snprintf(f[i], 128, "%.*s", (int)(nl - p), p);
        p = nl + 1;
    }
    *payload = p;
    *plen = (size_t)(end - p);
}

/* The value of field name in a stream entry's field array, or NULL. */
static const redisReply *entry_field(const redisReply *entry, const char *name)
{
    const redisReply *f = entry->element[1];
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (!strcmp(f->element[i]->str, name))
            return f->element[i + 1];
    return NULL;
}

Test(store, bus_and_history_always_agree)
{
    enum { AGGS = 12, ROUNDS = 40 };
    char ids[AGGS][16];
    int64_t version[AGGS] = {0};
    char last_eid[AGGS][37];
    memset(last_eid, 0, sizeof last_eid);
    for (int a = 0; a < AGGS; a++)
        snprintf(ids[a], sizeof ids[a], "agree-%02d", a);
    unsigned seed = 42;
    int conflicts = 0, dups = 0, written = 0;
    for (int round = 0; round < ROUNDS; round++) {
        for (int a = 0; a < AGGS; a++) {
            seed = seed * 1103515245u + 12345u;
            unsigned pick = (seed >> 16) % 6;
            es_append_res res;
            if (pick == 0 && last_eid[a][0]) { /* replay the last event id */
                cr_assert_eq(append1(ids[a], "StockReserved", last_eid[a], NULL, version[a] - 1, json_pack("{}"),
                                     &res), ES_OK);
                cr_assert(res.duplicate);
                dups++;
            } else if (pick == 1) { /* a stale writer */
                cr_assert_eq(append1(ids[a], "CheckoutTimedOut", NULL, NULL, version[a] + 1, json_pack("{}"), &res),
                             ES_ECONFLICT);
                conflicts++;
            } else if (pick == 2) { /* a batch */
                es_new_event evs[3] = {{.type = "OrderCreated"}, {.type = "StockReleased"}, {.type = "CheckoutFailed"}};
                es_append_req req = {.aggregate = "checkout", .aggregate_id = ids[a], .producer = "test",
                                     .expected_version = version[a], .events = evs, .n = 3};
                cr_assert_eq(es_append(S, &req, &res), ES_OK);
                version[a] += 3;
                written += 3;
                snprintf(last_eid[a], 37, "%s", res.pos[2].event_id);
            } else {
                char eid[37];
                cm_uuid7(eid);
                cr_assert_eq(append1(ids[a], "StockReserved", eid, NULL, pick == 3 ? ES_ANY_VERSION : version[a],
                                     json_pack("{s:i, s:s}", "round", round, "text", "\xc3\xa9t\xc3\xa9"), &res),
                             ES_OK);
                version[a]++;
                written++;
                snprintf(last_eid[a], 37, "%s", eid);
            }
        }
    }
    cr_assert_gt(conflicts, 0);
    cr_assert_gt(dups, 0);

    /* history -> bus: every element's bus entry exists with the same bytes */
    long long total = 0;
    for (int a = 0; a < AGGS; a++) {
        char key[512];
        es_history_key("checkout", ids[a], key, sizeof key);
        redisReply *h = cmd("LRANGE %s 0 -1", key);
        cr_assert_eq((long long)h->elements, version[a]);
        total += (long long)h->elements;
        for (size_t i = 0; i < h->elements; i++) {
            char f[4][128];
            const char *payload;
            size_t plen;
            split_history(h->element[i], f, &payload, &plen);
            redisReply *e = cmd("XRANGE %s %s %s", es_store_bus(S), f[1], f[1]);
            cr_assert_eq(e->elements, 1, "history %s[%zu] names bus entry %s, which is missing", key, i, f[1]);
            const redisReply *bt = entry_field(e->element[0], "type");
            const redisReply *bp = entry_field(e->element[0], "payload");
            const redisReply *bts = entry_field(e->element[0], "ts");
            cr_assert(bt && bp && bts);
            cr_assert_str_eq(bt->str, f[2]);
            cr_assert_str_eq(bts->str, f[3]);
            cr_assert_eq(bp->len, plen);
            cr_assert_eq(memcmp(bp->str, payload, plen), 0, "bus and history payloads differ");
            freeReplyObject(e);
        }
        freeReplyObject(h);
    }
    cr_assert_eq(total, written);

    /* bus -> history: every entry is its aggregate's seq-th element */
    cr_assert_eq(bus_len(), total);
    redisReply *bus = cmd("XRANGE %s - +", es_store_bus(S));
    for (size_t i = 0; i < bus->elements; i++) {
        es_event *ev;
        char err[256];
        cr_assert_eq(es_event_from_entry(bus->element[i], &ev, err, sizeof err), 0, "%s", err);
        char key[512];
        es_history_key(ev->aggregate, ev->aggregate_id, key, sizeof key);
        redisReply *el = cmd("LINDEX %s %lld", key, (long long)ev->seq - 1);
        cr_assert_eq(el->type, REDIS_REPLY_STRING, "bus entry %s has no history element", ev->entry_id);
        char f[4][128];
        const char *payload;
        size_t plen;
        split_history(el, f, &payload, &plen);
        cr_assert_str_eq(f[0], ev->event_id);
        cr_assert_str_eq(f[1], ev->entry_id);
        cr_assert_eq(plen, ev->payload_len);
        cr_assert_eq(memcmp(payload, ev->payload, plen), 0);
        freeReplyObject(el);
        es_event_free(ev);
    }
    freeReplyObject(bus);
}

/* ---- concurrency ------------------------------------------------------- */

enum { WRITERS = 8, PER_WRITER = 200 };

/* A child process: its own connection and store, PER_WRITER appends to one
 * aggregate. Even writers append with ES_ANY_VERSION; odd ones name the
 * version they last saw and retry on conflict, as workers do. Exits 0 when
 * every append landed. */
static void writer(int w, const char *url)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char err[256];
    redisContext *c = cm_redis_connect(url, 5000, err, sizeof err);
    if (!c)
        _exit(2);
    es_store *s = es_store_new(c, NULL, err, sizeof err);
    if (!s)
        _exit(3);
    int64_t version = 0;
    for (int i = 0; i < PER_WRITER; i++) {
        json_t *data = json_pack("{s:i, s:i}", "writer", w, "n", i);
        es_new_event ev = {.type = "StockReserved", .data = data};
        char eid[37];
        cm_uuid7(eid);
        ev.event_id = eid;
        es_append_req req = {.aggregate = "checkout", .aggregate_id = "hot", .producer = "writer",
                             .expected_version = w % 2 ? version : ES_ANY_VERSION, .events = &ev, .n = 1};
        es_append_res res;
        int rc;
        int tries = 0;
        while ((rc = es_append(s, &req, &res)) == ES_ECONFLICT && tries++ < 100000)
            req.expected_version = res.version;
        json_decref(data);
        if (rc != ES_OK || res.duplicate)
            _exit(4);
        version = res.version;
    }
    es_store_free(s);
    redisFree(c);
    _exit(0);
}

Test(store, eight_processes_appending_concurrently_get_seq_1_to_n)
{
    pid_t pids[WRITERS];
    for (int w = 0; w < WRITERS; w++) {
        pids[w] = fork();
        cr_assert_neq(pids[w], -1);
        if (pids[w] == 0)
            writer(w, R.url);
    }
    for (int w = 0; w < WRITERS; w++) {
        int status = 0;
        cr_assert_eq(tf_wait_exit(pids[w], 90000, &status), 0, "writer %d did not finish", w);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer %d failed (status %d)", w, status);
    }

    es_event **h;
    size_t n;
    cr_assert_eq(es_history_read(S, "checkout", "hot", &h, &n), ES_OK, "%s", es_store_errstr(S));
    cr_assert_eq(n, WRITERS * PER_WRITER);
    cr_assert_eq(bus_len(), WRITERS * PER_WRITER);
    int next[WRITERS] = {0};
    char **eids = calloc(n, sizeof *eids);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(h[i]->seq, (int64_t)i + 1, "position %zu holds seq %lld", i, (long long)h[i]->seq);
        json_t *w = json_object_get(h[i]->data, "writer");
        json_t *k = json_object_get(h[i]->data, "n");
        cr_assert(json_is_integer(w) && json_is_integer(k));
        int wi = (int)json_integer_value(w);
        cr_assert(wi >= 0 && wi < WRITERS);
        cr_assert_eq(json_integer_value(k), next[wi], "writer %d's events out of order", wi);
        next[wi]++;
        eids[i] = h[i]->event_id;
    }
    for (int w = 0; w < WRITERS; w++)
        cr_assert_eq(next[w], PER_WRITER);
    qsort(eids, n, sizeof *eids, cmp_str);
    for (size_t i = 1; i < n; i++)
        cr_assert_str_neq(eids[i - 1], eids[i], "event id stored twice");
    free(eids);

    /* and the bus holds the same events in the same order */
    redisReply *bus = cmd("XRANGE %s - +", es_store_bus(S));
    cr_assert_eq(bus->elements, n);
    for (size_t i = 0; i < n; i++)
        cr_assert_str_eq(bus->element[i]->element[0]->str, h[i]->entry_id);
    freeReplyObject(bus);
    es_events_free(h, n);
}

/* ---- replay ------------------------------------------------------------ */

/* Writes the saga types[0..n) to checkout id as the workers would (each
 * follow-up caused by the previous event, naming the version it read), then
 * replays it from the history and from the bus; both folds must agree. */
static void replay_saga(const char *id, const char *const *types, json_t **datas, size_t n, es_checkout_state *st)
{
    char cause[37] = "";
    for (size_t i = 0; i < n; i++) {
        es_append_res res;
        int rc = append1(id, types[i], NULL, cause[0] ? cause : NULL, (int64_t)i, datas[i], &res);
        cr_assert_eq(rc, ES_OK, "%s: %s", types[i], es_store_errstr(S));
        snprintf(cause, sizeof cause, "%s", res.pos[0].event_id);
    }
    /* noise on the bus from another checkout */
    must_append("other", "CheckoutInitiated", NULL, ES_ANY_VERSION, json_pack("{s:s}", "client_id", "zz"));

    es_event **h;
    size_t hn;
    cr_assert_eq(es_history_read(S, "checkout", id, &h, &hn), ES_OK);
    cr_assert_eq(hn, n);
    for (size_t i = 0; i < hn; i++) {
        cr_assert_str_eq(h[i]->type, types[i]);
        cr_assert_eq(h[i]->seq, (int64_t)i + 1);
        if (i)
            cr_assert_str_eq(h[i]->causation_id, h[i - 1]->event_id);
        else
            cr_assert_null(h[i]->causation_id);
    }
    es_checkout_fold(h, hn, st);

    /* the same checkout replayed from the bus, page by page */
    es_event *mine[32];
    size_t k = 0;
    char *after = NULL;
    do {
        es_event **page;
        size_t pn;
        char *next;
        cr_assert_eq(es_stream_page(S, es_store_bus(S), after, 3, &page, &pn, &next), ES_OK);
        for (size_t i = 0; i < pn; i++) {
            if (page[i]->aggregate_id && !strcmp(page[i]->aggregate_id, id)) {
                cr_assert_lt(k, 32);
                mine[k++] = page[i];
                page[i] = NULL;
            }
        }
        es_events_free(page, pn);
        free(after);
        after = next;
    } while (after);
    cr_assert_eq(k, n);
    es_checkout_state from_bus;
    es_checkout_fold(mine, k, &from_bus);
    cr_assert_eq(memcmp(&from_bus, st, sizeof *st), 0, "bus and history replays differ");
    for (size_t i = 0; i < k; i++)
        es_event_free(mine[i]);
    es_events_free(h, hn);
}

static json_t *initiated_data(void)
{
    return json_pack("{s:s, s:[{s:s, s:i, s:i}], s:i}", "client_id", "client-1", "items", "product_id", "p-1",
                     "quantity", 1, "unit_price_cents", 900, "total_cents", 900);
}

Test(store, replay_folds_a_succeeded_saga)
{
    const char *types[] = {"CheckoutInitiated", "StockReserved", "OrderCreated", "CheckoutSucceeded"};
    json_t *datas[] = {initiated_data(), json_pack("{s:s, s:[]}", "client_id", "client-1", "items"),
                       json_pack("{s:s, s:s, s:i}", "order_id", "ord-1", "client_id", "client-1", "total_cents", 900),
                       json_pack("{s:s}", "order_id", "ord-1")};
    es_checkout_state st;
    replay_saga("s-ok", types, datas, 4, &st);
    cr_assert_str_eq(st.status, CM_STATUS_SUCCEEDED);
    cr_assert_str_eq(st.order_id, "ord-1");
    cr_assert_str_eq(st.client_id, "client-1");
    cr_assert_eq(st.total_cents, 900);
    cr_assert_eq(st.version, 4);
    cr_assert_eq(st.terminal_events, 1);
    cr_assert_not(st.reserved);
}

Test(store, replay_folds_a_stock_failure_saga)
{
    const char *types[] = {"CheckoutInitiated", "StockReservationFailed", "CheckoutFailed"};
    json_t *datas[] = {initiated_data(),
                       json_pack("{s:s, s:s}", "reason", CM_REASON_INSUFFICIENT_STOCK, "product_id", "p-1"),
                       json_pack("{s:s}", "reason", CM_REASON_INSUFFICIENT_STOCK)};
    es_checkout_state st;
    replay_saga("s-stock", types, datas, 3, &st);
    cr_assert_str_eq(st.status, CM_STATUS_FAILED);
    cr_assert_str_eq(st.reason, CM_REASON_INSUFFICIENT_STOCK);
    cr_assert_eq(st.version, 3);
    cr_assert_eq(st.terminal_events, 1);
    cr_assert_not(st.reserved);
}

Test(store, replay_folds_an_order_failure_with_compensation)
{
    const char *types[] = {"CheckoutInitiated", "StockReserved", "OrderCreationFailed", "StockReleased",
                           "CheckoutFailed"};
    json_t *datas[] = {initiated_data(), json_pack("{s:s, s:[]}", "client_id", "client-1", "items"),
                       json_pack("{s:s}", "reason", CM_REASON_ORDER_LIMIT), json_pack("{s:[]}", "items"),
                       json_pack("{s:s}", "reason", CM_REASON_ORDER_LIMIT)};
    es_checkout_state st;
    replay_saga("s-order", types, datas, 5, &st);
    cr_assert_str_eq(st.status, CM_STATUS_FAILED);
    cr_assert_str_eq(st.reason, CM_REASON_ORDER_LIMIT);
    cr_assert_str_eq(st.order_id, "");
    cr_assert_not(st.reserved, "compensated");
    cr_assert_eq(st.version, 5);
    cr_assert_eq(st.terminal_events, 1);
}

Test(store, replay_folds_a_timed_out_saga)
{
    const char *types[] = {"CheckoutInitiated", "StockReserved", "CheckoutTimedOut", "StockReleased",
                           "CheckoutFailed"};
    json_t *datas[] = {initiated_data(), json_pack("{s:s, s:[]}", "client_id", "client-1", "items"),
                       json_pack("{s:i}", "after_ms", 30000), json_pack("{s:[]}", "items"),
                       json_pack("{s:s}", "reason", CM_REASON_TIMED_OUT)};
    es_checkout_state st;
    replay_saga("s-timeout", types, datas, 5, &st);
    cr_assert_str_eq(st.status, CM_STATUS_FAILED);
    cr_assert_str_eq(st.reason, CM_REASON_TIMED_OUT);
    cr_assert(st.timed_out);
    cr_assert_not(st.reserved);
    cr_assert_eq(st.terminal_events, 1);
}

Test(store, history_of_an_unknown_aggregate_is_empty)
{
    es_event **h = (es_event **)0x1;
    size_t n = 99;
    cr_assert_eq(es_history_read(S, "checkout", "nobody", &h, &n), ES_OK);
    cr_assert_eq(n, 0);
    es_events_free(h, n);
}

/* ---- pages of the bus -------------------------------------------------- */

/* Reads the whole bus with pages of count; returns the ids in order (caller
 * frees each and the array) and checks that next is NULL exactly at the end. */
static char **walk(size_t count, size_t *total, size_t *pages)
{
    char **ids = NULL;
    size_t n = 0;
    char *after = NULL;
    *pages = 0;
    for (;;) {
        es_event **page;
        size_t pn;
        char *next;
        cr_assert_eq(es_stream_page(S, es_store_bus(S), after, count, &page, &pn, &next), ES_OK);
        (*pages)++;
        cr_assert_leq(pn, count);
        ids = realloc(ids, sizeof *ids * (n + pn + 1));
        for (size_t i = 0; i < pn; i++) {
            ids[n++] = strdup(page[i]->entry_id);
            cm_buf out = CM_BUF_INIT; /* every event renders as valid JSON */
            es_event_to_json(page[i], &out);
            json_error_t jerr;
            json_t *j = json_loadb(out.data, out.len, 0, &jerr);
            cr_assert_not_null(j, "invalid JSON answer %s: %s", out.data, jerr.text);
            json_decref(j);
            cm_buf_free(&out);
        }
        if (next)
            cr_assert_str_eq(next, page[pn - 1]->entry_id, "next is the last id of the page");
        es_events_free(page, pn);
        free(after);
        after = next;
        if (!after)
            break;
        cr_assert_lt(*pages, 1000, "pagination does not end");
    }
    *total = n;
    return ids;
}

Test(store, stream_page_walks_the_bus_with_next_until_null)
{
    for (int i = 0; i < 25; i++)
        must_append(i % 2 ? "pg-a" : "pg-b", "StockReserved", NULL, ES_ANY_VERSION, json_pack("{s:i}", "i", i));
    redisReply *all = cmd("XRANGE %s - +", es_store_bus(S));
    cr_assert_eq(all->elements, 25);

    const size_t counts[] = {10, 25, 5, 1000, 1};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        size_t n, pages;
        char **ids = walk(counts[c], &n, &pages);
        cr_assert_eq(n, 25, "count %zu: %zu events", counts[c], n);
        for (size_t i = 0; i < n; i++) {
            cr_assert_str_eq(ids[i], all->element[i]->element[0]->str, "count %zu: order differs", counts[c]);
            free(ids[i]);
        }
        free(ids);
        /* a short last page ends the walk; an exact fit needs one empty page */
        size_t want = 25 / counts[c] + 1;
        cr_assert_eq(pages, want, "count %zu: %zu pages", counts[c], pages);
    }

    /* "", "0-0" and NULL all start at the beginning; after the last id is empty */
    const char *starts[] = {"", "0-0", "0"};
    for (size_t i = 0; i < 3; i++) {
        es_event **page;
        size_t pn;
        char *next;
        cr_assert_eq(es_stream_page(S, es_store_bus(S), starts[i], 3, &page, &pn, &next), ES_OK);
        cr_assert_eq(pn, 3);
        cr_assert_str_eq(page[0]->entry_id, all->element[0]->element[0]->str);
        cr_assert_str_eq(next, all->element[2]->element[0]->str);
        free(next);
        es_events_free(page, pn);
    }
    es_event **page;
    size_t pn;
    char *next;
    cr_assert_eq(es_stream_page(S, es_store_bus(S), all->element[24]->element[0]->str, 10, &page, &pn, &next), ES_OK);
    cr_assert_eq(pn, 0);
    cr_assert_null(next);
    es_events_free(page, pn);
    cr_assert_eq(es_stream_page(S, es_store_bus(S), NULL, 0, &page, &pn, &next), ES_EINVAL);
    /* a stream that does not exist is an empty page */
    cr_assert_eq(es_stream_page(S, "no.such.stream", NULL, 10, &page, &pn, &next), ES_OK);
    cr_assert_eq(pn, 0);
    cr_assert_null(next);
    es_events_free(page, pn);
    freeReplyObject(all);
}

Test(store, stream_page_shows_foreign_entries_without_crashing)
{
    const char *bus = es_store_bus(S);
    must_append("fx", "CheckoutInitiated", NULL, 0, json_pack("{s:s}", "client_id", "c"));
    freeReplyObject(cmd("XADD %s * foo bar junk %b", bus, "\xff\x00\x01", (size_t)3));
    freeReplyObject(cmd("XADD %s * type StockReserved payload %s ts %s", bus, "not json {", "zzz"));
    freeReplyObject(cmd("XADD %s * type StockReserved", bus));
    freeReplyObject(cmd("XADD %s * type %s payload %s ts 1.5", bus, "Odd\"Type", "[1,2]"));
    must_append("fx", "StockReserved", NULL, 1, json_pack("{s:s}", "client_id", "c"));

    size_t n, pages;
    char **ids = walk(2, &n, &pages);
    cr_assert_eq(n, 6, "every entry is shown, foreign ones included");
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);

    es_event **page;
    size_t pn;
    char *next;
    cr_assert_eq(es_stream_page(S, bus, NULL, 100, &page, &pn, &next), ES_OK);
    cr_assert_eq(pn, 6);
    cr_assert_null(next);
    cr_assert_eq(page[0]->kind, CM_EV_CHECKOUT_INITIATED);
    for (size_t i = 1; i <= 4; i++) {
        cr_assert_eq(page[i]->kind, CM_EV_UNKNOWN, "foreign entry %zu", i);
        cr_assert_null(page[i]->data);
        cr_assert_null(page[i]->event_id);
        cr_assert_not_null(page[i]->type);
        cr_assert_not_null(page[i]->payload);
        cr_assert_not_null(page[i]->ts);
    }
    cr_assert_str_eq(page[2]->payload, "not json {");
    cr_assert_str_eq(page[2]->ts, "zzz");
    cr_assert_eq(page[5]->kind, CM_EV_STOCK_RESERVED);
    cr_assert_eq(page[5]->seq, 2);
    es_events_free(page, pn);

    /* the store keeps working on a bus with foreign entries */
    es_event **h;
    size_t hn;
    cr_assert_eq(es_history_read(S, "checkout", "fx", &h, &hn), ES_OK);
    cr_assert_eq(hn, 2);
    es_events_free(h, hn);
}

/* ---- retention --------------------------------------------------------- */

/* Writes an old event straight to the bus with explicit entry id and, like an
 * append would have, to checkout agg's history. */
static void add_old_event(const char *entry_id, const char *agg, int64_t seq)
{
    es_new_event ne = {.type = "CheckoutInitiated"};
    es_encoded enc = {0};
    es_encode(&ne, "checkout", agg, NULL, "old", &enc);
    cm_buf p = CM_BUF_INIT;
    cm_buf_put(&p, enc.head.data, enc.head.len);
    cm_buf_printf(&p, "%lld", (long long)seq);
    cm_buf_put(&p, enc.tail.data, enc.tail.len);
    freeReplyObject(cmd("XADD %s %s type %s payload %b ts %s", es_store_bus(S), entry_id, ne.type, p.data, p.len,
                        "1.000000"));
    char key[512];
    es_history_key("checkout", agg, key, sizeof key);
    cm_buf el = CM_BUF_INIT;
    cm_buf_printf(&el, "%s\n%s\n%s\n%s\n", enc.event_id, entry_id, ne.type, "1.000000");
    cm_buf_put(&el, p.data, p.len);
    freeReplyObject(cmd("RPUSH %s %b", key, el.data, el.len));
    cm_buf_free(&el);
    cm_buf_free(&p);
    es_encoded_free(&enc);
}

/* The history lists only, for "histories untouched". */
static char *dump_histories(void)
{
    cm_buf out = CM_BUF_INIT;
    char *all = dump_keyspace();
    /* keep the lines of history keys */
    for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n"))
        if (!strncmp(line, CM_KEY_PREFIX "h:", strlen(CM_KEY_PREFIX "h:"))) {
            cm_buf_puts(&out, line);
            cm_buf_putc(&out, '\n');
        }
    free(all);
    if (!out.data)
        cm_buf_puts(&out, "");
    return cm_buf_steal(&out);
}

Test(store, retention_trims_only_the_bus_and_only_old_entries)
{
    add_old_event("1000-0", "ancient", 1);
    add_old_event("1001-0", "ancient", 2);
    add_old_event("2000-5", "ancient-2", 1);
    for (int i = 0; i < 5; i++)
        must_append("recent", "StockReserved", NULL, i, json_pack("{s:i}", "i", i));
    cr_assert_eq(bus_len(), 8);
    char *before = dump_keyspace();

    /* 0 days: keep forever */
    cr_assert_eq(es_retention_trim(S, 0), 0);
    char *after0 = dump_keyspace();
    cr_assert_str_eq(after0, before, "retention 0 wrote something");
    free(after0);
    /* a horizon older than the epoch trims nothing and is no error */
    cr_assert_eq(es_retention_trim(S, 1000000), 0, "%s", es_store_errstr(S));
    cr_assert_eq(bus_len(), 8);

    char *hist_before = dump_histories();
    cr_assert_eq(es_retention_trim(S, 30), 3, "%s", es_store_errstr(S));
    cr_assert_eq(bus_len(), 5);
    redisReply *first = cmd("XRANGE %s - + COUNT 1", es_store_bus(S));
    cr_assert_eq(first->elements, 1);
    long long first_ms = strtoll(first->element[0]->element[0]->str, NULL, 10);
    cr_assert_gt(first_ms, cm_wall_ms() - 30LL * 86400000LL, "an old entry survived");
    freeReplyObject(first);

    char *hist_after = dump_histories();
    cr_assert_str_eq(hist_after, hist_before, "retention touched a history");
    /* the old checkouts still replay from their histories */
    es_event **h;
    size_t n;
    cr_assert_eq(es_history_read(S, "checkout", "ancient", &h, &n), ES_OK, "%s", es_store_errstr(S));
    cr_assert_eq(n, 2);
    cr_assert_str_eq(h[1]->entry_id, "1001-0");
    es_events_free(h, n);
    /* trimming again removes nothing more */
    cr_assert_eq(es_retention_trim(S, 30), 0);
    cr_assert_eq(bus_len(), 5);
    free(hist_before);
    free(hist_after);
    free(before);
}

/* ---- failures of Redis ------------------------------------------------- */

Test(store, append_recovers_from_a_flushed_script_cache)
{
    must_append("ns", "CheckoutInitiated", NULL, 0, json_pack("{s:s}", "client_id", "c"));
    freeReplyObject(cmd("SCRIPT FLUSH"));
    must_append("ns", "StockReserved", NULL, 1, json_pack("{}"));
    freeReplyObject(cmd("SCRIPT FLUSH"));
    es_append_res res;
    cr_assert_eq(append1("ns", "CheckoutTimedOut", NULL, NULL, 1, json_pack("{}"), &res), ES_ECONFLICT,
                 "a conflict after a flush is still a conflict");
    cr_assert_eq(res.version, 2);
    cr_assert_eq(hist_len("ns"), 2);
    cr_assert_eq(bus_len(), 2);
}

Test(store, pipelined_appends_recover_from_a_flushed_script_cache)
{
    /* the pipeline path of scripts that embed the append (es_append_keys/args) */
    extern const char es_lua_append[];
    cm_script sc = {.src = es_lua_append};
    char err[256];
    cr_assert_eq(cm_script_load(C, &sc, err, sizeof err), 0, "%s", err);
    freeReplyObject(cmd("SCRIPT FLUSH"));
    enum { N = 6 };
    cm_argv a[N];
    memset(a, 0, sizeof a);
    for (int i = 0; i < N; i++) {
        char id[16];
        snprintf(id, sizeof id, "pl-%d", i);
        es_new_event ev = {.type = "CheckoutInitiated"};
        es_append_req req = {.aggregate = "checkout", .aggregate_id = id, .producer = "t", .expected_version = 0,
                             .events = &ev, .n = 1};
        es_append_keys(S, "checkout", id, &a[i]);
        cr_assert_eq(es_append_args(&req, &a[i]), ES_OK);
        cm_script_append(C, &sc, 2, &a[i]);
    }
    /* read every pipelined reply first, then retry the NOSCRIPT ones */
    redisReply *replies[N];
    for (int i = 0; i < N; i++) {
        replies[i] = cm_script_reply(C, &sc);
        cr_assert_not_null(replies[i]);
    }
    int noscript = 0, ok = 0;
    for (int i = 0; i < N; i++) {
        redisReply *r = replies[i];
        if (r->type == REDIS_REPLY_ERROR) {
            cr_assert(!strncmp(r->str, "NOSCRIPT", 8), "%s", r->str);
            noscript++;
            freeReplyObject(r);
            r = cm_script_call(C, &sc, 2, &a[i]); /* the caller's retry */
            cr_assert_not_null(r);
        }
        es_append_res res;
        cr_assert_eq(es_append_parse(r, 1, &res, err, sizeof err), ES_OK, "%s", err);
        cr_assert_eq(res.pos[0].seq, 1);
        ok++;
        freeReplyObject(r);
        cm_argv_free(&a[i]);
    }
    cr_assert_eq(ok, N);
    cr_assert_gt(noscript, 0, "the flush was noticed");
    cr_assert_eq(bus_len(), N);
}

Test(store, redis_gone_is_a_transient_error_not_a_crash)
{
    must_append("gone", "CheckoutInitiated", NULL, 0, json_pack("{s:s}", "client_id", "c"));
    cr_assert_eq(tf_redis_kill9(&R), 0);
    es_append_res res;
    cr_assert_eq(append1("gone", "StockReserved", NULL, NULL, 1, json_pack("{}"), &res), ES_EREDIS);
    cr_assert_neq(es_store_errstr(S)[0], '\0');
    es_event **h;
    size_t n;
    cr_assert_eq(es_history_read(S, "checkout", "gone", &h, &n), ES_EREDIS);
    cr_assert_eq(es_stream_page(S, es_store_bus(S), NULL, 10, &h, &n, &(char *){NULL}), ES_EREDIS);
    cr_assert_eq(es_retention_trim(S, 30), ES_EREDIS);
}

/* ---- dead letters ------------------------------------------------------ */

/* A park sent twice (what the cluster client does when a connection broke
 * after the command was written) leaves one dead letter and the entry acked;
 * the same entry read from another stream (its redelivery) is parked again. */
Test(store, a_resent_park_writes_one_dead_letter)
{
    const char *bus = es_store_bus(S);
    freeReplyObject(cmd("XGROUP CREATE %s g $ MKSTREAM", bus));
    freeReplyObject(cmd("XADD %s * type Poison payload {} ts 1", bus));
    redisReply *rd = cmd("XREADGROUP GROUP g c COUNT 1 STREAMS %s >", bus);
    cr_assert(rd->type == REDIS_REPLY_ARRAY && rd->elements == 1);
    const redisReply *entry = rd->element[0]->element[1]->element[0];
    char err[256];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(es_dlq_park(C, bus, bus, "g", entry, "poison", 3, err, sizeof err), 0, "%s", err);
    char dlq[512], retry[512];
    es_dlq_stream(bus, "g", dlq, sizeof dlq);
    es_retry_stream(bus, "g", retry, sizeof retry);
    redisReply *n = cmd("XLEN %s", dlq);
    cr_expect_eq(n->integer, 1, "%lld dead letters for one entry parked twice", n->integer);
    freeReplyObject(n);
    redisReply *p = cmd("XPENDING %s g", bus);
    cr_expect_eq(p->element[0]->integer, 0, "the parked entry is still pending");
    freeReplyObject(p);
    /* the same id read from the redelivery stream is another delivery */
    cr_assert_eq(es_dlq_park(C, bus, retry, "g", entry, "poison again", 4, err, sizeof err), 0, "%s", err);
    n = cmd("XLEN %s", dlq);
    cr_expect_eq(n->integer, 2);
    freeReplyObject(n);
    freeReplyObject(rd);
}
