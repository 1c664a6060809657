/* apply_script.c - builds the call of projections/lua/apply.lua and parses
 * its reply. The script's KEYS and ARGV layout lives here, by name (the
 * enums below, mirrored by the constants at the top of apply.lua, which
 * refuses a caller of another layout version).
 *
 * Keys are collected while events are added: each key name (from
 * common/names.h) enters KEYS once, found again through a small open-
 * addressing table, and events, products and clients refer to it by its
 * 1-based KEYS index.
 *
 * A call belongs to one partition: its checkouts are that partition's, and
 * the stock, client and checkpoint keys it names are that partition's
 * copies (cm_key_rm_*(p, ...)), so with PARTITIONS > 1 every key carries the
 * partition's hash tag and the script is one Redis Cluster slot. */
#include "projections/apply_script.h"
#include "common/buf.h"
#include "common/clock.h"
#include "common/cluster.h"
#include "common/ids.h"
#include "common/redis.h"
#include "common/xmalloc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char pj_lua_apply[];

#define LAYOUT "4"   /* apply.lua's LAYOUT: bump both when the layout changes (4: checkout field order) */
#define STR_(x) #x
#define STR(x) STR_(x)
#define CLIENT_KEEP STR(PJ_CLIENT_CHECKOUTS_MAX)

/* KEYS[1 + K_*]: the fixed keys; read-model keys follow. */
enum { K_CHECKPOINT, K_LOCK, K_FIXED };

/* ARGV[1 + A_*]: the header. */
enum {
    A_LAYOUT,
    A_MODE,
    A_CHECKPOINT,   /* greatest bus entry id offered, or "" */
    A_CHANNEL,
    A_PENDING,
    A_RESERVED,
    A_SUCCEEDED,
    A_FAILED,
    A_NEVENTS,
    A_NPRODUCTS,
    A_NCLIENTS,
    A_CLIENT_KEEP,  /* PJ_CLIENT_CHECKOUTS_MAX */
    A_TTL,          /* lifetime of closed checkouts' read models and client indexes, s (0: kept) */
    A_NOW,          /* the wall clock, unix seconds: a model already past its lifetime is not kept */
    A_COUNT
};

/* Per event, after the header. */
enum { EV_TYPE, EV_ID, EV_KEY, EV_SEQ, EV_EMITTED, EV_CLIENT, EV_VALUE, EV_ITEMS, EV_COUNT };
/* Per product, after the events. */
enum { PR_ID, PR_KEY, PR_COUNT };
/* Per client, after the products. */
enum { CL_ID, CL_KEY, CL_CHECKOUTS, CL_COUNT };

struct pj_apply_call {
    cm_script script;
    int partition;            /* every key is this partition's */
    enum pj_mode mode;
    long long ttl_s;          /* A_TTL; kept across resets */
    char checkpoint[48];      /* greatest offered bus entry id, "" none */
    cm_argv keys;             /* KEYS in order */
    uint32_t *slots;          /* hash of keys: KEYS index (1-based), 0 empty */
    size_t nslots;            /* power of two, > 2 * keys.n */
    cm_argv events;           /* EV_COUNT per event */
    cm_argv products;         /* PR_COUNT per product */
    cm_argv clients;          /* CL_COUNT per client */
    double *e2e;              /* reply buffer */
    size_t e2e_cap;
};

pj_apply_call *pj_apply_call_new(int partition)
{
    pj_apply_call *call = cm_xcalloc(1, sizeof *call);
    call->script.src = pj_lua_apply;
    call->partition = partition >= 0 && partition < cm_partitions() ? partition : 0;
    pj_apply_call_reset(call, PJ_LIVE);
    return call;
}

void pj_apply_call_free(pj_apply_call *call)
{
    if (!call)
        return;
    cm_argv_free(&call->keys);
    cm_argv_free(&call->events);
    cm_argv_free(&call->products);
    cm_argv_free(&call->clients);
    free(call->slots);
    free(call->e2e);
    free(call);
}

void pj_apply_call_reset(pj_apply_call *call, enum pj_mode mode)
{
    call->mode = mode;
    call->checkpoint[0] = '\0';
    cm_argv_reset(&call->keys);
    cm_argv_reset(&call->events);
    cm_argv_reset(&call->products);
    cm_argv_reset(&call->clients);
    if (call->slots)
        memset(call->slots, 0, call->nslots * sizeof *call->slots);
    cm_argv_adds(&call->keys, cm_key_rm_checkpoint(call->partition).s);   /* K_CHECKPOINT */
    cm_argv_adds(&call->keys, cm_key_pj_rebuild(call->partition).s);      /* K_LOCK */
}

int pj_apply_call_partition(const pj_apply_call *call) { return call->partition; }

void pj_apply_call_lifetime(pj_apply_call *call, long long ttl_s)
{
    call->ttl_s = ttl_s > 0 ? ttl_s : 0;
}

size_t pj_apply_call_nevents(const pj_apply_call *call) { return (size_t)call->events.n / EV_COUNT; }
size_t pj_apply_call_nkeys(const pj_apply_call *call) { return (size_t)call->keys.n; }

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static void slots_insert(pj_apply_call *call, uint32_t idx)
{
    const char *s = call->keys.v[idx - 1];
    size_t mask = call->nslots - 1, i = hash_bytes(s, call->keys.len[idx - 1]) & mask;
    while (call->slots[i])
        i = (i + 1) & mask;
    call->slots[i] = idx;
}

/* The 1-based KEYS index of key, adding it if new (*added tells). */
static uint32_t key_index(pj_apply_call *call, const cm_key *key, bool *added)
{
    size_t n = strlen(key->s);
    if ((size_t)call->keys.n * 2 + 2 > call->nslots) {   /* keep the table at most half full */
        size_t want = call->nslots ? call->nslots * 2 : 256;
        while (want < (size_t)call->keys.n * 2 + 2)
            want *= 2;
        free(call->slots);
        call->slots = cm_xcalloc(want, sizeof *call->slots);
        call->nslots = want;
        for (uint32_t k = K_FIXED + 1; k <= (uint32_t)call->keys.n; k++)
            slots_insert(call, k);
    }
    size_t mask = call->nslots - 1, i = hash_bytes(key->s, n) & mask;
    for (; call->slots[i]; i = (i + 1) & mask) {
        uint32_t k = call->slots[i];
        if (call->keys.len[k - 1] == n && !memcmp(call->keys.v[k - 1], key->s, n)) {
            *added = false;
            return k;
        }
    }
    cm_argv_add(&call->keys, key->s, n);
    call->slots[i] = (uint32_t)call->keys.n;
    *added = true;
    return (uint32_t)call->keys.n;
}

static bool is_id(const char *s)
{
    return s && cm_id_valid(s, strlen(s), 64);
}

int pj_apply_call_add_product(pj_apply_call *call, const char *product_id)
{
    if (!is_id(product_id))
        return PJ_EINVAL;
    cm_key k = cm_key_rm_stock(call->partition, product_id);
    bool added;
    uint32_t idx = key_index(call, &k, &added);
    if (added) {
        const char *f[PR_COUNT];
        char ks[16];
        snprintf(ks, sizeof ks, "%u", idx);
        f[PR_ID] = product_id;
        f[PR_KEY] = ks;
        for (int i = 0; i < PR_COUNT; i++)
            cm_argv_adds(&call->products, f[i]);
    }
    return PJ_OK;
}

int pj_apply_call_add_client(pj_apply_call *call, const char *client_id)
{
    if (!is_id(client_id))
        return PJ_EINVAL;
    cm_key k = cm_key_rm_client(call->partition, client_id),
           kc = cm_key_rm_client_checkouts(call->partition, client_id);
    bool added, added2;
    uint32_t idx = key_index(call, &k, &added);
    if (added) {
        uint32_t idx2 = key_index(call, &kc, &added2);
        const char *f[CL_COUNT];
        char ks[16], ks2[16];
        snprintf(ks, sizeof ks, "%u", idx);
        snprintf(ks2, sizeof ks2, "%u", idx2);
        f[CL_ID] = client_id;
        f[CL_KEY] = ks;
        f[CL_CHECKOUTS] = ks2;
        for (int i = 0; i < CL_COUNT; i++)
            cm_argv_adds(&call->clients, f[i]);
    }
    return PJ_OK;
}

int pj_apply_call_checkpoint(pj_apply_call *call, const char *entry_id)
{
    unsigned long long ms, seq, cms, cseq;
    if (!cm_stream_id_parse(entry_id, &ms, &seq) || strlen(entry_id) >= sizeof call->checkpoint)
        return PJ_EINVAL;
    if (!call->checkpoint[0] || !cm_stream_id_parse(call->checkpoint, &cms, &cseq) || ms > cms ||
        (ms == cms && seq > cseq))
        snprintf(call->checkpoint, sizeof call->checkpoint, "%s", entry_id);
    return PJ_OK;
}

/* The script's one-letter code of an event type (see apply.lua). */
static char type_letter(enum cm_event_type k)
{
    switch (k) {
    case CM_EV_CHECKOUT_INITIATED: return 'I';
    case CM_EV_STOCK_RESERVED: return 'R';
    case CM_EV_STOCK_RESERVATION_FAILED: return 'X';
    case CM_EV_ORDER_CREATED: return 'O';
    case CM_EV_ORDER_CREATION_FAILED: return 'Y';
    case CM_EV_STOCK_RELEASED: return 'L';
    case CM_EV_CHECKOUT_SUCCEEDED: return 'S';
    case CM_EV_CHECKOUT_FAILED: return 'F';
    case CM_EV_CHECKOUT_TIMED_OUT: return 'T';
    default: return '?';
    }
}

int pj_apply_call_add_event(pj_apply_call *call, const pj_apply_event *ev, char *err, size_t errlen)
{
    bool has_client = ev->client_id && ev->client_id[0];
    if (!is_id(ev->checkout_id)) {
        snprintf(err, errlen, "checkout id is not an id");
        return PJ_EINVAL;
    }
    if (cm_partition_of(ev->checkout_id) != call->partition) {
        snprintf(err, errlen, "checkout %.64s is in partition %d, the call in %d", ev->checkout_id,
                 cm_partition_of(ev->checkout_id), call->partition);
        return PJ_EINVAL;
    }
    if (ev->seq < 1 || ev->seq > PJ_MAX_SEQ) {
        snprintf(err, errlen, "seq %lld outside 1..%d", ev->seq, PJ_MAX_SEQ);
        return PJ_EINVAL;
    }
    if (has_client && !is_id(ev->client_id)) {
        snprintf(err, errlen, "client id is not an id");
        return PJ_EINVAL;
    }
    for (size_t i = 0; i < ev->nitems; i++)
        if (!is_id(ev->items[i].product_id) || ev->items[i].quantity < 1) {
            snprintf(err, errlen, "item %zu: not a product id with a quantity >= 1", i);
            return PJ_EINVAL;
        }
    /* validated: nothing below fails */
    cm_key ck = cm_key_rm_checkout(ev->checkout_id);
    bool added;
    uint32_t cidx = key_index(call, &ck, &added);
    if (has_client && pj_apply_call_add_client(call, ev->client_id) != PJ_OK)
        return PJ_EINVAL;
    cm_buf items = CM_BUF_INIT;
    for (size_t i = 0; i < ev->nitems; i++) {
        if (pj_apply_call_add_product(call, ev->items[i].product_id) != PJ_OK)
            break;
        cm_buf_printf(&items, "%s%s:%lld", i ? "," : "", ev->items[i].product_id, ev->items[i].quantity);
    }
    char letter[2] = {type_letter(ev->type), '\0'}, key[16], seq[24], em[48];
    snprintf(key, sizeof key, "%u", cidx);
    snprintf(seq, sizeof seq, "%lld", ev->seq);
    snprintf(em, sizeof em, "%.6f", ev->emitted_at);
    const char *f[EV_COUNT];
    f[EV_TYPE] = letter;
    f[EV_ID] = ev->checkout_id;
    f[EV_KEY] = key;
    f[EV_SEQ] = seq;
    f[EV_EMITTED] = em;
    f[EV_CLIENT] = has_client ? ev->client_id : "";
    f[EV_VALUE] = ev->value ? ev->value : "";
    f[EV_ITEMS] = items.data ? items.data : "";
    for (int i = 0; i < EV_COUNT; i++)
        cm_argv_adds(&call->events, f[i]);
    cm_buf_free(&items);
    return PJ_OK;
}

/* Adds what a {"need", kind, id, ...} reply asks for. */
static int add_needed(pj_apply_call *call, const redisReply *r, size_t *needed, char *err, size_t errlen)
{
    *needed = 0;
    for (size_t i = 1; i + 1 < r->elements; i += 2) {
        const redisReply *kind = r->element[i], *id = r->element[i + 1];
        int rc = PJ_EINVAL;
        if (cm_reply_is_str(kind) && cm_reply_is_str(id)) {
            if (!strcmp(kind->str, "product"))
                rc = pj_apply_call_add_product(call, id->str);
            else if (!strcmp(kind->str, "client"))
                rc = pj_apply_call_add_client(call, id->str);
        }
        if (rc != PJ_OK) {
            snprintf(err, errlen, "apply.lua asked for a key it cannot have (element %zu)", i);
            return PJ_EREDIS;
        }
        (*needed)++;
    }
    if (!*needed) {
        snprintf(err, errlen, "apply.lua answered need without naming a key");
        return PJ_EREDIS;
    }
    return PJ_OK;
}

/* Reads {"ok", applied, duplicates, e2e...}. */
static int parse_ok(pj_apply_call *call, const redisReply *r, pj_apply_reply *out, char *err, size_t errlen)
{
    const redisReply *a = cm_reply_elem(r, 1), *d = cm_reply_elem(r, 2);
    if (!a || !d || a->type != REDIS_REPLY_INTEGER || d->type != REDIS_REPLY_INTEGER) {
        snprintf(err, errlen, "apply.lua: ok without counts");
        return PJ_EREDIS;
    }
    out->applied = a->integer;
    out->duplicates = d->integer;
    for (size_t i = 3; i < r->elements; i++) {
        const redisReply *v = r->element[i];
        char *end;
        double x = cm_reply_is_str(v) ? strtod(v->str, &end) : 0;
        if (!cm_reply_is_str(v) || end == v->str) {
            snprintf(err, errlen, "apply.lua: e2e value %zu is not a number", i - 3);
            return PJ_EREDIS;
        }
        if (out->ne2e == call->e2e_cap) {
            call->e2e_cap = call->e2e_cap ? call->e2e_cap * 2 : 64;
            call->e2e = cm_xrealloc(call->e2e, call->e2e_cap * sizeof *call->e2e);
        }
        call->e2e[out->ne2e++] = x;
    }
    out->e2e = call->e2e;
    return PJ_OK;
}

/* Calls fn(view) with the script's KEYS and ARGV: a view over the parts
 * (no copy; the header lives on this frame). */
static int with_view(pj_apply_call *call, int (*fn)(pj_apply_call *, const cm_argv *, void *), void *arg)
{
    char counts[3][24], ttl[24], now[24];
    snprintf(ttl, sizeof ttl, "%lld", call->ttl_s);
    snprintf(now, sizeof now, "%lld", (long long)cm_wall_s());
    snprintf(counts[0], sizeof counts[0], "%zu", pj_apply_call_nevents(call));
    snprintf(counts[1], sizeof counts[1], "%d", call->products.n / PR_COUNT);
    snprintf(counts[2], sizeof counts[2], "%d", call->clients.n / CL_COUNT);
    const char *h[A_COUNT];
    h[A_LAYOUT] = LAYOUT;
    h[A_MODE] = call->mode == PJ_LIVE ? "live" : "rebuild";
    h[A_CHECKPOINT] = call->checkpoint;
    h[A_CHANNEL] = CM_RM_CHANGED_CHANNEL;
    h[A_PENDING] = CM_STATUS_PENDING;
    h[A_RESERVED] = CM_STATUS_STOCK_RESERVED;
    h[A_SUCCEEDED] = CM_STATUS_SUCCEEDED;
    h[A_FAILED] = CM_STATUS_FAILED;
    h[A_NEVENTS] = counts[0];
    h[A_NPRODUCTS] = counts[1];
    h[A_NCLIENTS] = counts[2];
    h[A_CLIENT_KEEP] = CLIENT_KEEP;
    h[A_TTL] = ttl;
    h[A_NOW] = now;

    /* KEYS, header, events, products, clients */
    const cm_argv *parts[] = {&call->events, &call->products, &call->clients};
    int n = call->keys.n + A_COUNT;
    for (size_t p = 0; p < 3; p++)
        n += parts[p]->n;
    cm_argv view = {.v = cm_xmalloc(sizeof *view.v * (size_t)n), .len = cm_xmalloc(sizeof *view.len * (size_t)n)};
    for (int i = 0; i < call->keys.n; i++, view.n++)
        view.v[view.n] = call->keys.v[i], view.len[view.n] = call->keys.len[i];
    for (int i = 0; i < A_COUNT; i++, view.n++)
        view.v[view.n] = (char *)h[i], view.len[view.n] = strlen(h[i]);
    for (size_t p = 0; p < 3; p++)
        for (int i = 0; i < parts[p]->n; i++, view.n++)
            view.v[view.n] = parts[p]->v[i], view.len[view.n] = parts[p]->len[i];
    int rc = fn(call, &view, arg);
    free(view.v);
    free(view.len);
    return rc;
}

static int queue_view(pj_apply_call *call, const cm_argv *view, void *pipe)
{
    return cm_pipe_script(pipe, &call->script, call->keys.n, view);
}

int pj_apply_call_queue(pj_apply_call *call, cm_pipe *pipe, char *err, size_t errlen)
{
    if (with_view(call, queue_view, pipe) != 0) {
        snprintf(err, errlen, "apply.lua (partition %d): its keys span cluster slots (a cluster needs PARTITIONS > 1)",
                 call->partition);
        return PJ_EREDIS;
    }
    return PJ_OK;
}

int pj_apply_call_parse(pj_apply_call *call, redisReply *r, pj_apply_reply *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->e2e = call->e2e;
    if (!r) {
        snprintf(err, errlen, "apply.lua (partition %d): no reply", call->partition);
        return PJ_EREDIS;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis: %.*s", (int)r->len, r->str);
        freeReplyObject(r);
        return PJ_EREDIS;
    }
    int rc = PJ_OK;
    const redisReply *st = cm_reply_elem(r, 0);
    if (!cm_reply_is_str(st)) {
        snprintf(err, errlen, "unexpected apply.lua reply");
        rc = PJ_EREDIS;
    } else if (!strcmp(st->str, "busy")) {
        snprintf(err, errlen, "a read-model rebuild is running");
        out->verdict = PJ_APPLY_BUSY;
    } else if (!strcmp(st->str, "need")) {
        out->verdict = PJ_APPLY_NEED;
        rc = add_needed(call, r, &out->needed, err, errlen);
    } else if (!strcmp(st->str, "ok")) {
        out->verdict = PJ_APPLY_DONE;
        rc = parse_ok(call, r, out, err, errlen);
    } else {
        snprintf(err, errlen, "unexpected apply.lua verdict %.32s", st->str);
        rc = PJ_EREDIS;
    }
    freeReplyObject(r);
    return rc;
}

typedef struct send_arg {
    cm_cluster *cc;
    redisReply *reply;
} send_arg;

static int send_view(pj_apply_call *call, const cm_argv *view, void *arg)
{
    send_arg *a = arg;
    a->reply = cm_cluster_script(a->cc, &call->script, call->keys.n, view);
    return 0;
}

int pj_apply_call_run_once(pj_apply_call *call, cm_cluster *cc, pj_apply_reply *out, char *err, size_t errlen)
{
    send_arg a = {.cc = cc};
    (void)with_view(call, send_view, &a);
    if (!a.reply) {
        memset(out, 0, sizeof *out);
        out->e2e = call->e2e;
        snprintf(err, errlen, "redis: %s", cm_cluster_errstr(cc));
        return PJ_EREDIS;
    }
    return pj_apply_call_parse(call, a.reply, out, err, errlen);
}

int pj_apply_call_run(pj_apply_call *call, cm_cluster *cc, pj_apply_reply *out, char *err, size_t errlen)
{
    int rc = pj_apply_call_run_once(call, cc, out, err, errlen);
    if (rc != PJ_OK || out->verdict != PJ_APPLY_NEED)
        return rc;
    size_t needed = out->needed;
    rc = pj_apply_call_run_once(call, cc, out, err, errlen);
    out->needed += needed;
    if (rc == PJ_OK && out->verdict == PJ_APPLY_NEED) {
        snprintf(err, errlen, "apply.lua still lacked %zu key(s) on its second call", out->needed - needed);
        rc = PJ_EREDIS;
    }
    return rc;
}
