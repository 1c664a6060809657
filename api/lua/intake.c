/* intake.c - intake.lua's call (KEYS/ARGV by name, reply as a verdict) and
 * the price cache the API prices events from. */
#include "api/lua/intake.h"
#include "common/ids.h"
#include "common/names.h"
#include "event_store/store.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- price cache ----
 * Open addressing over a fixed table: a cache, so a full table overwrites
 * the slot the id hashes to. Prices are checked by the script anyway. */
#define CACHE_SLOTS 4096
#define PROBE 8

static struct {
    pthread_mutex_t mu;
    struct {
        char id[72];
        long long price;
    } slot[CACHE_SLOTS];
} g_cache = {.mu = PTHREAD_MUTEX_INITIALIZER};

static size_t slot_of(const char *id)
{
    size_t h = 1469598103934665603ULL;   /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h % CACHE_SLOTS;
}

long long api_price_get(const char *product_id)
{
    long long price = -1;
    size_t s = slot_of(product_id);
    pthread_mutex_lock(&g_cache.mu);
    for (int i = 0; i < PROBE; i++) {
        size_t k = (s + (size_t)i) % CACHE_SLOTS;
        if (!strcmp(g_cache.slot[k].id, product_id)) {
            price = g_cache.slot[k].price;
            break;
        }
    }
    pthread_mutex_unlock(&g_cache.mu);
    return price;
}

void api_price_put(const char *product_id, long long price)
{
    if (strlen(product_id) >= sizeof g_cache.slot[0].id)
        return;
    size_t s = slot_of(product_id), at = s;
    pthread_mutex_lock(&g_cache.mu);
    for (int i = 0; i < PROBE; i++) {
        size_t k = (s + (size_t)i) % CACHE_SLOTS;
        if (!g_cache.slot[k].id[0] || !strcmp(g_cache.slot[k].id, product_id)) {
            at = k;
            break;
        }
    }
    snprintf(g_cache.slot[at].id, sizeof g_cache.slot[at].id, "%s", product_id);
    g_cache.slot[at].price = price;
    pthread_mutex_unlock(&g_cache.mu);
}

/* ---- the call ---- */

/* CheckoutInitiated's data: client_id, items with unit prices, total. */
static json_t *event_data(const api_intake_call *in)
{
    json_t *items = json_array();
    long long total = 0;
    for (size_t i = 0; i < in->n; i++) {
        const api_intake_line *l = &in->lines[i];
        json_array_append_new(items, json_pack("{s:s, s:I, s:I}", "product_id", l->product_id, "quantity",
                                               (json_int_t)l->qty, "unit_price_cents", (json_int_t)l->price));
        total += l->qty * (l->price > 0 ? l->price : 0);
    }
    return json_pack("{s:s, s:o, s:I}", "client_id", in->client_id, "items", items, "total_cents",
                     (json_int_t)total);
}

int api_intake_build(const api_intake_call *in, cm_argv *a, int *nkeys)
{
    if (in->n < 1 || in->n > API_INTAKE_MAX_LINES)
        return -1;
    bool has_key = in->idem_key && in->idem_key[0];
    /* KEYS: idempotency record, history, bus, one product hash per line */
    cm_argv_adds(a, cm_key_idem(in->client_id, has_key ? in->idem_key : "-").s);
    cm_argv_adds(a, cm_key_history("checkout", in->checkout_id).s);
    cm_argv_adds(a, cm_key_bus(in->bus, cm_partition_of(in->checkout_id)).s);
    for (size_t i = 0; i < in->n; i++)
        cm_argv_adds(a, cm_key_product(in->lines[i].product_id).s);
    *nkeys = a->n;
    /* ARGV: has_key, hash, record, ttl, n, n prices, then the append */
    cm_argv_adds(a, has_key ? "1" : "0");
    cm_argv_adds(a, in->body_hash);
    cm_argv_addf(a, "%s\n%s", in->checkout_id, in->answer);
    cm_argv_addll(a, in->idem_ttl_s);
    cm_argv_addll(a, (long long)in->n);
    for (size_t i = 0; i < in->n; i++)
        cm_argv_addll(a, in->lines[i].price);
    /* The event id is derived from the (fresh, random) checkout id: unique
     * too, and one getrandom(2) cheaper than a second UUIDv7. */
    char event_id[CM_UUID_LEN + 1];
    cm_uuid_derive(in->checkout_id, cm_event_type_names[CM_EV_CHECKOUT_INITIATED], event_id);
    json_t *data = event_data(in);
    es_new_event ev = {.event_id = event_id, .type = cm_event_type_names[CM_EV_CHECKOUT_INITIATED], .data = data};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = in->checkout_id, .producer = "api",
                         .expected_version = 0, .events = &ev, .n = 1};
    int rc = es_append_args(&req, a) == ES_OK ? 0 : -1;
    json_decref(data);
    return rc;
}

void api_intake_parse(const redisReply *r, api_intake_call *in, api_intake_reply *out)
{
    memset(out, 0, sizeof *out);
    out->verdict = API_INTAKE_FAILED;
    const redisReply *st = cm_reply_elem(r, 0), *arg = cm_reply_elem(r, 1);
    if (!cm_reply_is_str(st)) {
        snprintf(out->err, sizeof out->err, "unexpected intake reply");
        return;
    }
    if (!strcmp(st->str, "replay") && arg && arg->type == REDIS_REPLY_STRING) {
        out->verdict = API_INTAKE_REPLAY;
        out->record = arg->str;
        out->record_len = arg->len;
        return;
    }
    if (!strcmp(st->str, "unknown")) {
        long long i = cm_reply_ll(arg, 0);
        if (i >= 1 && (size_t)i <= in->n) {
            out->verdict = API_INTAKE_UNKNOWN;
            out->line = (size_t)i - 1;
            return;
        }
    } else if (!strcmp(st->str, "prices") && r->elements == 1 + in->n) {
        for (size_t i = 0; i < in->n; i++) {
            long long p = cm_reply_ll(r->element[1 + i], -1);
            if (p < 0) {
                snprintf(out->err, sizeof out->err, "intake: price of line %zu unreadable", i);
                return;
            }
            in->lines[i].price = p;
            api_price_put(in->lines[i].product_id, p);
        }
        out->verdict = API_INTAKE_REPRICE;
        return;
    } else {
        es_append_res res;
        if (es_append_parse(r, 1, &res, out->err, sizeof out->err) == ES_OK && !res.duplicate &&
            res.pos[0].seq == 1) {
            out->verdict = API_INTAKE_ACCEPTED;
            return;
        }
    }
    if (!out->err[0])
        snprintf(out->err, sizeof out->err, "unexpected intake answer %s", st->str);
}
