/* saga_events.c - synthetic sagas, dumps and waits (see saga_events.h). */
#include "tests/integration/saga_events.h"

#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/names.h"
#include "common/redis.h"
#include "tests/support/proc.h"

void sx_event(es_store *s, const char *checkout_id, const char *type, json_t *data)
{
    es_new_event ev = {.type = type, .data = data};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = checkout_id, .producer = "test",
                         .expected_version = ES_ANY_VERSION, .events = &ev, .n = 1};
    es_append_res res;
    int rc = es_append(s, &req, &res);
    json_decref(data);
    cr_assert_eq(rc, ES_OK, "append %s to %s: %s", type, checkout_id, es_store_errstr(s));
}

void sx_saga(es_store *s, enum sx_shape shape, const char *checkout_id, const char *client_id,
             const char *product_id, long long qty)
{
    json_t *items = json_pack("[{s:s, s:I, s:I}]", "product_id", product_id, "quantity", (json_int_t)qty,
                              "unit_price_cents", (json_int_t)100);
    json_int_t total = qty * 100;
    char order_id[128];
    snprintf(order_id, sizeof order_id, "ord-%s", checkout_id);
    sx_event(s, checkout_id, "CheckoutInitiated",
             json_pack("{s:s, s:O, s:I}", "client_id", client_id, "items", items, "total_cents", total));
    switch (shape) {
    case SX_SUCCESS:
        sx_event(s, checkout_id, "StockReserved", json_pack("{s:s, s:O}", "client_id", client_id, "items", items));
        sx_event(s, checkout_id, "OrderCreated",
                 json_pack("{s:s, s:s, s:I}", "order_id", order_id, "client_id", client_id, "total_cents", total));
        sx_event(s, checkout_id, "CheckoutSucceeded", json_pack("{s:s}", "order_id", order_id));
        break;
    case SX_NO_STOCK:
        sx_event(s, checkout_id, "StockReservationFailed",
                 json_pack("{s:s, s:s}", "reason", CM_REASON_INSUFFICIENT_STOCK, "product_id", product_id));
        sx_event(s, checkout_id, "CheckoutFailed", json_pack("{s:s}", "reason", CM_REASON_INSUFFICIENT_STOCK));
        break;
    case SX_ORDER_LIMIT:
        sx_event(s, checkout_id, "StockReserved", json_pack("{s:s, s:O}", "client_id", client_id, "items", items));
        sx_event(s, checkout_id, "OrderCreationFailed", json_pack("{s:s}", "reason", CM_REASON_ORDER_LIMIT));
        sx_event(s, checkout_id, "StockReleased", json_pack("{s:O}", "items", items));
        sx_event(s, checkout_id, "CheckoutFailed", json_pack("{s:s}", "reason", CM_REASON_ORDER_LIMIT));
        break;
    case SX_TIMEOUT:
        sx_event(s, checkout_id, "StockReserved", json_pack("{s:s, s:O}", "client_id", client_id, "items", items));
        sx_event(s, checkout_id, "CheckoutTimedOut", json_pack("{s:I}", "after_ms", (json_int_t)30000));
        sx_event(s, checkout_id, "StockReleased", json_pack("{s:O}", "items", items));
        sx_event(s, checkout_id, "CheckoutFailed", json_pack("{s:s}", "reason", CM_REASON_TIMED_OUT));
        break;
    }
    json_decref(items);
}

es_event **sx_history(es_store *s, const char *checkout_id, size_t *n)
{
    es_event **evs = NULL;
    cr_assert_eq(es_history_read(s, "checkout", checkout_id, &evs, n), ES_OK, "history of %s", checkout_id);
    return evs;
}

const char *sx_last_id(redisContext *c, const char *stream)
{
    static char id[64];
    redisReply *r = redisCommand(c, "XREVRANGE %s + - COUNT 1", stream);
    cr_assert(r && r->type == REDIS_REPLY_ARRAY, "XREVRANGE %s", stream);
    id[0] = '\0';
    if (r->elements)
        snprintf(id, sizeof id, "%s", r->element[0]->element[0]->str);
    freeReplyObject(r);
    return id;
}

typedef struct wait_str {
    redisContext *c;
    const char *key, *field, *want;
    long long wantll;
} wait_str;

static bool str_is(void *ud)
{
    wait_str *w = ud;
    redisReply *r = redisCommand(w->c, "GET %s", w->key);
    bool ok = r && cm_reply_is_str(r) && !strcmp(r->str, w->want);
    freeReplyObject(r);
    return ok;
}

bool sx_wait_str(redisContext *c, const char *key, const char *want, int timeout_ms)
{
    wait_str w = {.c = c, .key = key, .want = want};
    return tf_wait_until(str_is, &w, timeout_ms);
}

static bool ll_is(void *ud)
{
    wait_str *w = ud;
    redisReply *r = w->field ? redisCommand(w->c, "HGET %s %s", w->key, w->field)
                             : redisCommand(w->c, "XLEN %s", w->key);
    bool ok = r && cm_reply_ll(r, -1) == w->wantll;
    freeReplyObject(r);
    return ok;
}

bool sx_wait_ll(redisContext *c, const char *key, const char *field, long long want, int timeout_ms)
{
    wait_str w = {.c = c, .key = key, .field = field, .wantll = want};
    return tf_wait_until(ll_is, &w, timeout_ms);
}

static bool group_idle(void *ud)
{
    wait_str *w = ud;
    char last[64];
    snprintf(last, sizeof last, "%s", sx_last_id(w->c, w->key));
    redisReply *r = redisCommand(w->c, "XINFO GROUPS %s", w->key);
    bool ok = false;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *g = r->element[i];
        const char *name = NULL, *delivered = "";
        long long pending = -1;
        for (size_t j = 0; j + 1 < g->elements; j += 2) {
            const redisReply *k = g->element[j], *v = g->element[j + 1];
            if (!strcmp(k->str, "name") && cm_reply_is_str(v))
                name = v->str;
            else if (!strcmp(k->str, "pending"))
                pending = cm_reply_ll(v, -1);
            else if (!strcmp(k->str, "last-delivered-id") && cm_reply_is_str(v))
                delivered = v->str;
        }
        if (name && !strcmp(name, w->want))
            ok = pending == 0 && !strcmp(delivered, last);
    }
    freeReplyObject(r);
    return ok;
}

bool sx_wait_group_idle(redisContext *c, const char *bus, const char *group, int timeout_ms)
{
    wait_str w = {.c = c, .key = bus, .want = group};
    return tf_wait_until(group_idle, &w, timeout_ms);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void sx_dump_take(redisContext *c, const char *pattern, sx_dump *d)
{
    memset(d, 0, sizeof *d);
    size_t cap = 0;
    char cursor[32] = "0";
    do {
        redisReply *r = redisCommand(c, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2, "SCAN");
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            if (d->n == cap) {
                cap = cap ? cap * 2 : 64;
                d->keys = realloc(d->keys, cap * sizeof *d->keys);
            }
            d->keys[d->n++] = strdup(r->element[1]->element[i]->str);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    /* SCAN may return a key twice */
    if (d->n)
        qsort(d->keys, d->n, sizeof *d->keys, cmp_str);
    size_t k = 0;
    for (size_t i = 0; i < d->n; i++) {
        if (k && !strcmp(d->keys[k - 1], d->keys[i])) {
            free(d->keys[i]);
            continue;
        }
        d->keys[k++] = d->keys[i];
    }
    d->n = k;
    d->vals = calloc(d->n ? d->n : 1, sizeof *d->vals);
    d->lens = calloc(d->n ? d->n : 1, sizeof *d->lens);
    for (size_t i = 0; i < d->n; i++) {
        redisReply *r = redisCommand(c, "DUMP %s", d->keys[i]);
        cr_assert(r && r->type == REDIS_REPLY_STRING, "DUMP %s", d->keys[i]);
        d->vals[i] = malloc(r->len);
        memcpy(d->vals[i], r->str, r->len);
        d->lens[i] = r->len;
        freeReplyObject(r);
    }
}

void sx_dump_assert_eq(const sx_dump *a, const sx_dump *b)
{
    for (size_t i = 0; i < a->n || i < b->n; i++) {
        cr_assert(i < a->n && i < b->n, "key sets differ: %zu keys before, %zu after (first extra: %s)", a->n, b->n,
                  i < a->n ? a->keys[i] : b->keys[i]);
        cr_assert_str_eq(a->keys[i], b->keys[i], "key sets differ");
        cr_assert(a->lens[i] == b->lens[i] && !memcmp(a->vals[i], b->vals[i], a->lens[i]),
                  "%s differs byte-wise", a->keys[i]);
    }
}

void sx_dump_free(sx_dump *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->keys[i]);
        free(d->vals[i]);
    }
    free(d->keys);
    free(d->vals);
    free(d->lens);
    memset(d, 0, sizeof *d);
}

void sx_assert_hash(redisContext *c, const char *key, const char *const *fv)
{
    redisReply *r = redisCommand(c, "HGETALL %s", key);
    cr_assert(r && r->type == REDIS_REPLY_ARRAY, "HGETALL %s", key);
    size_t n = 0;
    while (fv[n])
        n++;
    char got[2048] = "";
    size_t off = 0;
    for (size_t i = 0; i < r->elements && off < sizeof got - 1; i++)
        off += (size_t)snprintf(got + off, sizeof got - off, "%s%s", i ? " " : "", r->element[i]->str);
    cr_assert_eq(r->elements, n, "%s has %zu fields+values, want %zu: %s", key, r->elements, n, got);
    for (size_t i = 0; i < n; i++)
        cr_assert_str_eq(r->element[i]->str, fv[i], "%s element %zu: got %s, want %s (all: %s)", key, i,
                         r->element[i]->str, fv[i], got);
    freeReplyObject(r);
}
