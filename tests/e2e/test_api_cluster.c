/* test_api_cluster.c - chorus-api on a real Redis Cluster (3 masters + 3
 * replicas, tests/support/cluster_fixture.h) with REDIS_URL=redis-cluster://
 * and PARTITIONS=8, over real HTTP.
 *
 * Each test has its own cluster (about 2 s to start: criterion runs each
 * test in a process of its own, which cannot share the runner's servers)
 * and its own chorus-api. --jobs=1: two clusters at once would only slow
 * both on two cores.
 *
 *   every_route_*   intake (202, an idempotent replay, unknown product 422),
 *                   status folded from the history, the replay and timeline
 *                   routes, products list/get/admin PUT, the streams list
 *                   and a page of each partition's bus (every accepted
 *                   checkout found on its partition's bus), workers, dead
 *                   letters listed, one retried, two on two partitions
 *                   retried in bulk, ready, health, metrics,
 *                   client and stats routes, and a long-poll woken by a
 *                   PUBLISH sent to another master than the API's.
 *   a_replay_*      with REDIS_WAIT_REPLICAS=1, a checkout whose record
 *                   another API process wrote is answered 202 on a replay
 *                   only once a replica has it (a cluster does not
 *                   replicate PUBLISH: the intake script's own mark does it).
 *   a_cluster_url_* PARTITIONS=1 with a cluster URL is refused at start.
 *   master_killed_* a master SIGKILLed under the API (REDIS_WAIT_REPLICAS=1):
 *                   every request is answered quickly (never a hang), with
 *                   503 (never 500) while the cluster fails over; once the
 *                   replica took over and the old master came back as its
 *                   replica, every checkout is accepted (202), and every
 *                   checkout a 202 answered is still in Redis, replayable by
 *                   its key. */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/cluster.h"
#include "common/names.h"
#include "tests/e2e/api_env.h"
#include "tests/e2e/cluster_cmd.h"
#include "tests/support/cluster_fixture.h"
#include "tests/support/proc.h"

#define NPART 8
#define JSON_CT "Content-Type: application/json\r\n"
#define ADMIN JSON_CT "Authorization: Bearer " AE_TOKEN "\r\n"
#define REPLY_BOUND_MS 5000   /* "never a hang": REDIS_TIMEOUT_MS is 1000 */

static tf_cluster g_cl;
static api_env E;
static cm_cluster *C;   /* the test's own client */

/* Starts the cluster, then chorus-api on it with the extra settings (up to 2). */
static void start_api(const char *extra1, const char *extra2)
{
    cr_assert_eq(tf_cluster_start(&g_cl, "appendonly yes\n"), 0, "the cluster did not start");
    cr_assert_eq(cm_partitions_set(NPART), 0);
    memset(&E, 0, sizeof E);
    snprintf(E.token, sizeof E.token, "%s", AE_TOKEN);
    char dir[] = "/tmp/chorus-api-cluster-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    snprintf(E.log, sizeof E.log, "%s/api.log", dir);
    snprintf(E.extra_env[0], sizeof E.extra_env[0], "REDIS_URL=%s", g_cl.url);
    snprintf(E.extra_env[1], sizeof E.extra_env[1], "PARTITIONS=%d", NPART);
    snprintf(E.extra_env[2], sizeof E.extra_env[2], "%s", extra1 ? extra1 : "");
    snprintf(E.extra_env[3], sizeof E.extra_env[3], "%s", extra2 ? extra2 : "");
    ae_start_api(&E);
    char err[256] = "";
    C = cm_cluster_open(g_cl.url, 5000, err, sizeof err);
    cr_assert_not_null(C, "cm_cluster_open: %s", err);
}

static int post_to(api_env *e, const char *client, const char *pid, const char *key, char *id, long long *ms);

/* post_to the (first) API. */
static int post(const char *client, const char *pid, const char *key, char *id, long long *ms)
{
    return post_to(&E, client, pid, key, id, ms);
}

static api_env E2;   /* a second API process on the same cluster */

static void stop_api(void)
{
    ae_teardown(&E2);
    ae_teardown(&E);
    cm_cluster_free(C);
    C = NULL;
    tf_cluster_stop(&g_cl);
}

TestSuite(api_cluster, .fini = stop_api, .timeout = 120);

static int slot_of(const char *key)
{
    return cm_key_slot(key, strlen(key));
}

static long long cmd_int(const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    cr_assert_geq(vasprintf(&s, fmt, ap), 0);
    va_end(ap);
    redisReply *r = tc_cmd(C, key, "%s", s);
    free(s);
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static const char *jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    cr_assert(json_is_string(v), "no string %s", k);
    return json_string_value(v);
}

/* GETs path, asserts 200 and returns the parsed body (caller decrefs). */
static json_t *get_json(const char *path)
{
    tf_http_resp r;
    ae_req(&E, "GET", path, NULL, NULL, &r);
    cr_assert_eq(r.status, 200, "GET %s: %d %s", path, r.status, r.body);
    json_t *j = ae_json(&r);
    tf_http_resp_free(&r);
    return j;
}

/* Posts a one-line checkout to the API of e; returns the status (202 or
 * 503, anything else fails the test) and copies the id of a 202. */
static int post_to(api_env *e, const char *client, const char *pid, const char *key, char *id, long long *ms)
{
    char body[256];
    snprintf(body, sizeof body, "{\"client_id\":\"%s\",\"items\":[{\"product_id\":\"%s\",\"quantity\":1}]}", client,
             pid);
    tf_http_resp r;
    long long t0 = tf_now_ms();
    ae_post_checkout(e, body, key, &r);
    if (ms)
        *ms = tf_now_ms() - t0;
    int st = r.status;
    if (st == 202) {
        json_t *j = ae_json(&r);
        snprintf(id, 64, "%s", jstr(j, "checkout_id"));
        json_decref(j);
    } else if (st != 503) {
        cr_assert_fail("POST /api/checkouts: %d %s", st, r.body);
    }
    tf_http_resp_free(&r);
    return st;
}

/* Creates the six consumer groups on every partition's bus. */
static void create_groups(void)
{
    for (int p = 0; p < NPART; p++) {
        cm_key bus = cm_key_bus(AE_BUS, p);
        for (int g = 0; g < CM_W_COUNT; g++) {
            redisReply *r = cm_cluster_command(C, slot_of(bus.s), "XGROUP CREATE %s %s 0 MKSTREAM", bus.s,
                                               cm_group_names[g]);
            cr_assert_not_null(r, "%s", cm_cluster_errstr(C));
            cr_assert(r->type != REDIS_REPLY_ERROR || strstr(r->str, "BUSYGROUP"), "%s", r->str);
            freeReplyObject(r);
        }
    }
}

Test(api_cluster, every_route_answers_on_a_cluster_as_on_one_node)
{
    start_api(NULL, NULL);
    tf_http_resp r;
    ae_req(&E, "GET", "/health", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    tf_http_resp_free(&r);

    /* catalog: the admin PUT writes the hash and the set (two slots) */
    ae_req(&E, "PUT", "/api/products/p1", ADMIN, "{\"name\":\"Widget\",\"price_cents\":1250,\"available\":100}", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    tf_http_resp_free(&r);
    ae_req(&E, "PUT", "/api/products/p2", ADMIN, "{\"name\":\"Gadget\",\"price_cents\":399,\"available\":5}", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    tf_http_resp_free(&r);
    cr_assert_neq(slot_of("chorus:product:p1"), slot_of(CM_KEY_PRODUCTS));
    json_t *j = get_json("/api/products");
    json_t *list = json_object_get(j, "products");
    cr_assert_eq(json_array_size(list), 2, "products: %zu", json_array_size(list));
    cr_assert_str_eq(jstr(json_array_get(list, 0), "product_id"), "p1");
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(list, 1), "price_cents")), 399);
    json_decref(j);
    j = get_json("/api/products/p2");
    cr_assert_str_eq(jstr(j, "name"), "Gadget");
    json_decref(j);

    /* intake on every partition: 24 checkouts, each key its own partition */
    char ids[24][64];
    for (int i = 0; i < 24; i++) {
        char key[32];
        snprintf(key, sizeof key, "route-%d", i);
        cr_assert_eq(post("c-1", i % 2 ? "p1" : "p2", key, ids[i], NULL), 202);
    }
    /* the event is priced from the catalog read at intake, "0999" is 999 */
    cm_key p2 = cm_key_product("p2");
    freeReplyObject(tc_cmd(C, p2.s, "HSET %s price_cents 0999", p2.s));
    char priced[64];
    cr_assert_eq(post("c-1", "p2", NULL, priced, NULL), 202);
    cm_key h = cm_key_history("checkout", priced);
    redisReply *ev = tc_cmd(C, h.s, "LINDEX %s 0", h.s);
    cr_assert(strstr(ev->str, "\"unit_price_cents\":999"), "%s", ev->str);
    freeReplyObject(ev);
    /* an idempotent replay answers the same checkout and starts nothing */
    char again[64];
    cr_assert_eq(post("c-1", "p2", "route-0", again, NULL), 202);
    cr_assert_str_eq(again, ids[0]);
    /* an unknown product is 422 and writes nothing, on the cluster too */
    ae_post_checkout(&E, "{\"client_id\":\"c-1\",\"items\":[{\"product_id\":\"ghost\",\"quantity\":1}]}", "k-422",
                     &r);
    ae_assert_error(&r, 422, "unknown_product");
    tf_http_resp_free(&r);
    cm_key idem = cm_key_idem("c-1", "k-422");
    cr_assert_eq(cmd_int(idem.s, "EXISTS %s", idem.s), 0);
    /* a catalog entry of the wrong type, or a price that is no number, is a
     * failure a retry cannot fix: 500, nothing written */
    cm_key px = cm_key_product("px"), py = cm_key_product("py");
    freeReplyObject(tc_cmd(C, px.s, "SET %s 1", px.s));
    freeReplyObject(tc_cmd(C, py.s, "HSET %s name y price_cents 12abc available 5", py.s));
    const char *broken[] = {"{\"client_id\":\"c-1\",\"items\":[{\"product_id\":\"px\",\"quantity\":1}]}",
                            "{\"client_id\":\"c-1\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1},"
                            "{\"product_id\":\"py\",\"quantity\":1}]}"};
    for (int i = 0; i < 2; i++) {
        ae_post_checkout(&E, broken[i], NULL, &r);
        ae_assert_error(&r, 500, "internal");
        tf_http_resp_free(&r);
    }

    /* every accepted checkout is on its partition's bus, and the streams
     * list and a page of each partition's bus say so */
    j = get_json("/api/event-store/streams");
    json_t *streams = json_object_get(j, "streams");
    cr_assert_eq(json_array_size(streams), NPART * (1 + CM_W_COUNT));
    long long total = 0;
    int used = 0;
    for (int p = 0; p < NPART; p++) {
        cm_key bus = cm_key_bus(AE_BUS, p);
        json_t *s = json_array_get(streams, (size_t)p * (1 + CM_W_COUNT));
        cr_assert_str_eq(jstr(s, "stream"), bus.s);
        long long len = json_integer_value(json_object_get(s, "length"));
        total += len;
        used += len > 0;
        char path[512];
        snprintf(path, sizeof path, "/api/event-store/streams/%s/events?count=1000", bus.s);
        json_t *page = get_json(path);
        cr_assert_eq((long long)json_array_size(json_object_get(page, "events")), len, "partition %d", p);
        json_decref(page);
    }
    json_decref(j);
    cr_assert_eq(total, 25, "bus lengths add up to %lld (a refused checkout was written?)", total);
    cr_assert_gt(used, 3, "the checkouts landed on %d partitions only", used);
    for (int i = 0; i < 24; i++) {
        cm_key bus = cm_key_bus(AE_BUS, cm_partition_of(ids[i]));
        redisReply *e = tc_cmd(C, bus.s, "XRANGE %s - +", bus.s);
        bool found = false;
        for (size_t k = 0; k < e->elements && !found; k++) {
            const redisReply *f = e->element[k]->element[1];
            for (size_t m = 0; m < f->elements && !found; m++)
                found = strstr(f->element[m]->str, ids[i]) != NULL;
        }
        freeReplyObject(e);
        cr_assert(found, "checkout %s is not on its partition's bus", ids[i]);
    }

    /* status folded from the history, its replay and timeline */
    char path[512];
    snprintf(path, sizeof path, "/api/checkouts/%s", ids[3]);
    j = get_json(path);
    cr_assert_str_eq(jstr(j, "status"), "PENDING");
    cr_assert_str_eq(jstr(j, "client_id"), "c-1");
    json_decref(j);
    snprintf(path, sizeof path, "/api/event-store/replay/checkout/%s", ids[3]);
    j = get_json(path);
    cr_assert_eq(json_array_size(json_object_get(j, "events")), 1);
    json_decref(j);
    create_groups();
    snprintf(path, sizeof path, "/api/checkouts/%s/timeline", ids[3]);
    j = get_json(path);
    json_t *groups = json_object_get(json_array_get(json_object_get(j, "events"), 0), "groups");
    cr_assert_eq(json_array_size(groups), CM_W_COUNT);
    cr_assert_str_eq(jstr(json_array_get(groups, 0), "state"), "undelivered");
    json_decref(j);
    ae_req(&E, "GET", "/api/checkouts/00000000-0000-7000-8000-000000000000", NULL, NULL, &r);
    ae_assert_error(&r, 404, "not_found");
    tf_http_resp_free(&r);

    /* workers: every group on every partition; ready once they all exist */
    j = get_json("/api/workers");
    json_t *gs = json_object_get(j, "groups");
    cr_assert_eq(json_array_size(gs), CM_W_COUNT);
    cr_assert_eq(json_array_size(json_object_get(json_array_get(gs, 0), "partitions")), NPART);
    json_decref(j);
    j = get_json("/ready");
    cr_assert_str_eq(jstr(j, "status"), "ready");
    json_decref(j);

    /* a dead letter parked on one partition: listed, then retried into that
     * partition's redelivery stream */
    int p = cm_partition_of(ids[5]);
    cm_key bus = cm_key_bus(AE_BUS, p);
    cm_key dlq = cm_key_dlq(bus.s, "choreo-audit"), retry = cm_key_retry(bus.s, "choreo-audit");
    redisReply *x = tc_cmd(C, dlq.s, "XADD %s * stream %s entry_id 1-1 group choreo-audit reason handler_failed "
                              "attempts 3 type CheckoutInitiated payload {} ts 1.0",
                        dlq.s, bus.s);
    char dl_id[64];
    snprintf(dl_id, sizeof dl_id, "%s", x->str);
    freeReplyObject(x);
    j = get_json("/api/dead-letters");
    json_t *dls = json_object_get(j, "dead_letters");
    cr_assert_eq(json_array_size(dls), 1);
    cr_assert_str_eq(jstr(json_array_get(dls, 0), "id"), dl_id);
    json_decref(j);
    snprintf(path, sizeof path, "/api/dead-letters/%s/retry", dl_id);
    ae_req(&E, "POST", path, ADMIN, "", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    tf_http_resp_free(&r);
    cr_assert_eq(cmd_int(dlq.s, "XLEN %s", dlq.s), 0);
    cr_assert_eq(cmd_int(retry.s, "XLEN %s", retry.s), 1);
    /* two more on two other partitions: the bulk retry takes both, each
     * into its own partition's redelivery stream */
    int parts[2] = {(p + 1) % NPART, (p + 2) % NPART};
    for (int i = 0; i < 2; i++) {
        cm_key b = cm_key_bus(AE_BUS, parts[i]);
        cm_key d = cm_key_dlq(b.s, "choreo-audit");
        freeReplyObject(tc_cmd(C, d.s, "XADD %s * stream %s entry_id 1-2 group choreo-audit reason handler_failed "
                                 "attempts 3 type CheckoutInitiated payload {} ts 1.0",
                            d.s, b.s));
    }
    ae_req(&E, "POST", "/api/dead-letters/retry", ADMIN, "{\"group\":\"choreo-audit\",\"count\":10}", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(strstr(r.body, "\"retried\":2"), "%s", r.body);
    tf_http_resp_free(&r);
    for (int i = 0; i < 2; i++) {
        cm_key b = cm_key_bus(AE_BUS, parts[i]);
        cm_key d = cm_key_dlq(b.s, "choreo-audit"), rt = cm_key_retry(b.s, "choreo-audit");
        cr_assert_eq(cmd_int(d.s, "XLEN %s", d.s), 0);
        cr_assert_eq(cmd_int(rt.s, "XLEN %s", rt.s), 1, "partition %d", parts[i]);
    }

    /* the other read routes answer */
    json_decref(get_json("/api/clients/c-1/checkouts"));
    json_decref(get_json("/api/event-store/cqrs/orders-by-client/c-1"));
    j = get_json("/api/stats/sagas?window_s=600");
    cr_assert_eq(json_integer_value(json_object_get(j, "started")), 25);
    json_decref(j);
    ae_req(&E, "GET", "/metrics", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "checkouts_accepted_total 25"), "%.400s", r.body);
    tf_http_resp_free(&r);

    /* a long-poll is woken by a change announced on a master: PUBLISH is
     * broadcast, whichever master the API subscribed on */
    cm_key rm = cm_key_rm_checkout(ids[7]);
    freeReplyObject(tc_cmd(C, rm.s, "HSET %s client_id c-1 status PENDING updated_at 1", rm.s));
    tf_http resp_conn;
    cr_assert_eq(tf_http_open(&resp_conn, E.port, 2000), 0);
    char req[300];
    int reqlen = snprintf(req, sizeof req, "GET /api/checkouts/%s?wait_ms=20000 HTTP/1.1\r\nHost: t\r\n\r\n", ids[7]);
    long long t0 = tf_now_ms();
    cr_assert_eq(tf_http_send_raw(&resp_conn, req, (size_t)reqlen, 2000), 0);
    tf_sleep_ms(300);   /* let it suspend (a wake-up before that is re-read anyway) */
    freeReplyObject(tc_cmd(C, rm.s, "HSET %s status SUCCEEDED order_id o-1", rm.s));
    /* announced on the master that owns the last slots: the API subscribed
     * on another (the first master of its map) */
    int slots[8];
    int nm = cm_cluster_master_slots(C, slots, 8);
    cr_assert_eq(nm, 3);
    redisReply *pub = cm_cluster_command(C, slots[nm - 1], "PUBLISH %s %s", CM_RM_CHANGED_CHANNEL, ids[7]);
    cr_assert(pub && pub->type == REDIS_REPLY_INTEGER);
    freeReplyObject(pub);
    cr_assert_eq(tf_http_read(&resp_conn, &r, false, 10000), 0);
    long long waited = tf_now_ms() - t0;
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(strstr(r.body, "SUCCEEDED"), "%s", r.body);
    cr_assert_lt(waited, 10000, "the long-poll was not woken (%lld ms)", waited);
    tf_http_resp_free(&r);
    tf_http_close(&resp_conn);
}

#define FO_KEYS 48
#define FO_BEFORE 16   /* accepted before the kill */

/* Posts key k (product pk) until it is accepted or deadline (monotonic ms)
 * passes; every answer must come within REPLY_BOUND_MS and be 202 or 503.
 * Returns the 503s seen; ids[k] is set once accepted. */
static int post_until_accepted(int k, char ids[][64], long long deadline, bool (*stop)(void))
{
    char key[32];
    snprintf(key, sizeof key, "fo-%d", k);
    int n503 = 0;
    while (!ids[k][0] && tf_now_ms() < deadline && !(stop && stop())) {
        long long ms = 0;
        int st = post("c-fo", "pk", key, ids[k], &ms);
        cr_assert_lt(ms, REPLY_BOUND_MS, "POST took %lld ms: a hang", ms);
        if (st == 503) {
            n503++;
            ids[k][0] = '\0';
            tf_sleep_ms(50);
        }
    }
    return n503;
}

static int g_replica = -1;

static bool replica_promoted(void)
{
    return tf_cluster_is_master(&g_cl, g_replica);
}

Test(api_cluster, master_killed_under_the_api_is_503_never_a_hang_then_202_with_nothing_accepted_lost)
{
    start_api("REDIS_WAIT_REPLICAS=1", "REDIS_WAIT_TIMEOUT_MS=300");
    tf_http_resp r;
    ae_req(&E, "PUT", "/api/products/pk", ADMIN, "{\"name\":\"K\",\"price_cents\":100,\"available\":1000}", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    tf_http_resp_free(&r);
    static char ids[FO_KEYS][64];
    for (int k = 0; k < FO_BEFORE; k++) {
        post_until_accepted(k, ids, tf_now_ms() + 10000, NULL);
        cr_assert(ids[k][0], "fo-%d was not accepted before the kill", k);
    }

    /* SIGKILL the master of partition 0's slot, under the API */
    cm_key bus0 = cm_key_bus(AE_BUS, 0);
    int m = tf_cluster_master_of(&g_cl, slot_of(bus0.s));
    cr_assert_geq(m, 0);
    g_replica = tf_cluster_replica_of(&g_cl, m);
    cr_assert_geq(g_replica, 0);
    cr_assert_eq(tf_redis_kill9(&g_cl.node[m]), 0);
    long long killed_at = tf_now_ms();

    /* while it fails over: every answer quick, 202 or 503, never 500 */
    int n503 = 0, k = FO_BEFORE;
    while (!replica_promoted() && tf_now_ms() < killed_at + 30000 && k < FO_KEYS) {
        n503 += post_until_accepted(k, ids, killed_at + 30000, replica_promoted);
        if (ids[k][0])
            k++;
    }
    cr_assert(replica_promoted(), "the replica was not promoted within 30 s");
    printf("api_cluster: %d answers 503 before the replica took over (%lld ms after the kill)\n", n503,
           tf_now_ms() - killed_at);
    cr_assert_gt(n503, 0, "no request was refused while a master was down");

    /* the old master comes back as the new one's replica (REDIS_WAIT_REPLICAS=1
     * needs one); then every checkout is accepted, each retried by its key */
    cr_assert_eq(tf_redis_restart(&g_cl.node[m]), 0);
    cr_assert_eq(tf_cluster_wait_ok(&g_cl, 30000), 0);
    long long deadline = tf_now_ms() + 30000;
    for (int i = 0; i < FO_KEYS; i++) {
        n503 += post_until_accepted(i, ids, deadline, NULL);
        cr_assert(ids[i][0], "fo-%d was never accepted after the failover", i);
    }

    /* nothing a 202 answered is lost: each history is there, the status
     * route finds it, and the key replays the same checkout */
    for (int i = 0; i < FO_KEYS; i++) {
        cm_key h = cm_key_history("checkout", ids[i]);
        cr_assert_eq(cmd_int(h.s, "LLEN %s", h.s), 1, "checkout %s (fo-%d) lost its history", ids[i], i);
        char path[128], again[64] = "";
        snprintf(path, sizeof path, "/api/checkouts/%.64s", ids[i]);
        json_decref(get_json(path));
        char key[32];
        snprintf(key, sizeof key, "fo-%d", i);
        cr_assert_eq(post("c-fo", "pk", key, again, NULL), 202);
        cr_assert_str_eq(again, ids[i], "fo-%d replayed another checkout", i);
    }
}

Test(api_cluster, a_cluster_url_with_one_partition_is_refused_at_start)
{
    /* without partition tags a checkout's keys are in several slots: the
     * API says so and exits 2 instead of answering every intake 500 */
    char dir[] = "/tmp/chorus-api-cluster-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char log[96];
    snprintf(log, sizeof log, "%s/api.log", dir);
    const char *bin = getenv("CHORUS_API_BIN");
    cr_assert_not_null(bin);
    const char *argv[] = {bin, NULL};
    const char *env[] = {"REDIS_URL=redis-cluster://127.0.0.1:1,127.0.0.1:2", "PARTITIONS=1", "API_PORT=1", NULL};
    pid_t pid = tf_spawn(argv, env, log);
    cr_assert_gt(pid, 0);
    int st = 0;
    cr_assert_eq(tf_wait_exit(pid, 10000, &st), 0, "chorus-api did not exit");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status 0x%x", st);
    FILE *f = fopen(log, "r");
    cr_assert_not_null(f);
    char text[1024] = "";
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    cr_assert(strstr(text, "PARTITIONS must be 2 or more"), "%s", text);
    remove(log);
    rmdir(dir);
}

/* LLEN of key on node i, read there (a replica, with READONLY). */
static long long node_llen(int i, const char *key)
{
    redisContext *c = tf_redis_connect(&g_cl.node[i]);
    freeReplyObject(redisCommand(c, "READONLY"));
    redisReply *r = redisCommand(c, "LLEN %s", key);
    cr_assert(r && r->type == REDIS_REPLY_INTEGER, "LLEN on node %d: %s", i, r ? r->str : c->errstr);
    long long n = r->integer;
    freeReplyObject(r);
    redisFree(c);
    return n;
}

Test(api_cluster, a_replay_is_202_only_once_a_replica_has_the_record_another_process_wrote)
{
    start_api("REDIS_WAIT_REPLICAS=1", "REDIS_WAIT_TIMEOUT_MS=300");
    E2 = E;   /* same settings, its own process, port and log */
    E2.api = 0;
    size_t ln = strlen(E2.log);
    cr_assert_lt(ln + 2, sizeof E2.log);
    memcpy(E2.log + ln, ".2", 3);
    ae_start_api(&E2);
    tf_http_resp r;
    ae_req(&E, "PUT", "/api/products/pw", ADMIN, "{\"name\":\"W\",\"price_cents\":100,\"available\":10}", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    tf_http_resp_free(&r);
    /* the second API has written before (its connections are not new) */
    char id[64] = "", again[64] = "";
    cr_assert_eq(post_to(&E2, "c-w", "pw", "w-0", id, NULL), 202);
    /* the replica of the master that holds the key's partition, frozen once
     * the master knows it acknowledged everything so far */
    cm_key idem = cm_key_idem("c-w", "w-1");
    int m = tf_cluster_master_of(&g_cl, slot_of(idem.s));
    int rep = tf_cluster_replica_of(&g_cl, m);
    cr_assert_geq(rep, 0);
    cr_assert(tf_cluster_replica_caught_up(&g_cl, m, 10000), "the replica of node %d never acknowledged its master's offset",
              m);
    cr_assert_eq(kill(g_cl.node[rep].server_pid, SIGSTOP), 0);
    int first = post("c-w", "pw", "w-1", id, NULL);
    /* the record is on the master, written by the first API */
    redisReply *rec = tc_cmd(C, idem.s, "GET %s", idem.s);
    bool written = rec->type == REDIS_REPLY_STRING;
    freeReplyObject(rec);
    /* the second replays it: WAIT is documented to cover the connection's
     * own writes, all older than the record here (the intake script makes
     * the replayed record one of them; Redis 7.0 also counts a read's
     * offset, so on it this outcome holds either way) */
    int replay = post_to(&E2, "c-w", "pw", "w-1", again, NULL);
    kill(g_cl.node[rep].server_pid, SIGCONT);
    cr_assert_eq(first, 503, "accepted while its only replica was frozen");
    cr_assert(written, "the 503'd checkout was not stored on the master");
    cr_assert_eq(replay, 503, "a replay was confirmed while the replica was frozen");
    /* thawed: the replay is confirmed, and the replica has the checkout */
    long long until = tf_now_ms() + 10000;
    int st = 503;
    while (st == 503 && tf_now_ms() < until) {
        st = post_to(&E2, "c-w", "pw", "w-1", again, NULL);
        if (st == 503)
            tf_sleep_ms(100);
    }
    cr_assert_eq(st, 202);
    cm_key h = cm_key_history("checkout", again);
    cr_assert_eq(node_llen(rep, h.s), 1, "202 for %s, which the replica does not have", again);
}
