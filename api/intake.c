/* intake.c - POST /api/checkouts (and the seed alias): validate, price,
 * append CheckoutInitiated, answer 202.
 *
 * Everything a client can get wrong is checked before anything is written:
 * JSON, fields, id charset and length, quantities, line count (the server
 * already checked body size, Content-Type and Idempotency-Key). Prices come
 * from the catalog in one pipelined round trip; an unknown product is 422.
 * Then one script (lua/intake.lua) appends the event and records the
 * idempotency key atomically, and only its success is answered 202: a 202
 * always means the event is in Redis. When Redis cannot take it the answer
 * is 503 and the client retries with the same key. */
#include "api/api_int.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/names.h"
#include "common/xmalloc.h"

#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINES 100
#define MAX_QTY 1000
#define MAX_PRICE_CENTS 1000000000000LL   /* a stored price above this is not a price */
#define IDEM_TTL_S 86400

static cm_series *g_published;   /* events_published_total{topic=bus,type=CheckoutInitiated} */
static cm_series *g_accepted;    /* checkouts_accepted_total */
static cm_series *g_replayed;    /* checkout_idempotent_replays_total */

void api_intake_metrics_init(void)
{
    char labels[300];
    cm_metrics_labels(labels, sizeof labels, "topic", g_api.bus, "type",
                      cm_event_type_names[CM_EV_CHECKOUT_INITIATED], (char *)NULL);
    g_published = cm_counter("events_published_total", "events appended to the bus", labels);
    g_accepted = cm_counter("checkouts_accepted_total", "checkouts accepted (202, new saga)", NULL);
    g_replayed = cm_counter("checkout_idempotent_replays_total",
                            "checkouts answered from an idempotency record (no new saga)", NULL);
}

typedef struct line {
    const char *product_id;   /* borrowed from the parsed body */
    long long qty;
    long long price;
} line;

/* Validates the parsed body; fills lines and *client. Answers 400 itself. */
static bool validate(api_req *rq, json_t *root, const char **client, line *lines, size_t *nlines)
{
    if (!json_is_object(root)) {
        api_error(rq, 400, "invalid_request", "the body must be a JSON object");
        return false;
    }
    json_t *cid = json_object_get(root, "client_id");
    if (!json_is_string(cid)) {
        api_error(rq, 400, "invalid_request", "client_id is required and must be a string");
        return false;
    }
    if (!cm_id_valid(json_string_value(cid), json_string_length(cid), API_ID_MAX)) {
        api_error(rq, 400, "invalid_request", "client_id must be 1..64 characters of [A-Za-z0-9_-]");
        return false;
    }
    *client = json_string_value(cid);
    json_t *items = json_object_get(root, "items");
    if (!json_is_array(items)) {
        api_error(rq, 400, "invalid_request", "items is required and must be an array");
        return false;
    }
    size_t n = json_array_size(items);
    if (n == 0 || n > MAX_LINES) {
        api_error(rq, 400, "invalid_request", "items must hold 1..%d lines (got %zu)", MAX_LINES, n);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(items, i);
        if (!json_is_object(it)) {
            api_error(rq, 400, "invalid_request", "items[%zu] must be an object", i);
            return false;
        }
        json_t *pid = json_object_get(it, "product_id");
        if (!json_is_string(pid) || !cm_id_valid(json_string_value(pid), json_string_length(pid), API_ID_MAX)) {
            api_error(rq, 400, "invalid_request",
                      "items[%zu].product_id must be 1..64 characters of [A-Za-z0-9_-]", i);
            return false;
        }
        json_t *q = json_object_get(it, "quantity");
        if (!json_is_integer(q) || json_integer_value(q) < 1 || json_integer_value(q) > MAX_QTY) {
            api_error(rq, 400, "invalid_request", "items[%zu].quantity must be an integer in 1..%d", i, MAX_QTY);
            return false;
        }
        lines[i].product_id = json_string_value(pid);
        lines[i].qty = (long long)json_integer_value(q);
    }
    *nlines = n;
    return true;
}

/* Reads every line's price in one pipelined round trip. Returns 0, 1 after
 * answering 422, or -1 after answering 503. */
static int price_lines(api_req *rq, api_redis *t, line *lines, size_t n)
{
    for (size_t i = 0; i < n; i++)
        redisAppendCommand(t->c, "HGET " CM_KEY_PREFIX "product:%s price_cents", lines[i].product_id);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(t->c, (void **)&r) != REDIS_OK) {
            snprintf(t->err, sizeof t->err, "redis: %s", t->c->errstr);
            api_redis_drop(t);
            api_unavailable(rq, t->err);
            return -1;
        }
        if (rc == 0 && r->type == REDIS_REPLY_ERROR) {
            snprintf(t->err, sizeof t->err, "redis: %s", r->str);
            rc = -1;
        } else if (rc == 0) {
            long long p = cm_reply_ll(r, -1);
            if (r->type == REDIS_REPLY_NIL || p < 0 || p > MAX_PRICE_CENTS) {
                api_error(rq, 422, "unknown_product", "product %s is not in the catalog", lines[i].product_id);
                rc = 1;
            }
            lines[i].price = p;
        }
        freeReplyObject(r);
    }
    if (rc < 0)
        api_unavailable(rq, t->err);
    return rc;
}

/* The event's data: {client_id, items:[{product_id, quantity, unit_price_cents}], total_cents}. */
static json_t *event_data(const char *client, const line *lines, size_t n)
{
    json_t *items = json_array();
    long long total = 0;
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(items, json_pack("{s:s,s:I,s:I}", "product_id", lines[i].product_id, "quantity",
                                               (json_int_t)lines[i].qty, "unit_price_cents",
                                               (json_int_t)lines[i].price));
        total += lines[i].qty * lines[i].price;
    }
    return json_pack("{s:s,s:o,s:I}", "client_id", client, "items", items, "total_cents", (json_int_t)total);
}

static void accepted_body(cm_buf *b, const char *id, bool alias)
{
    cm_buf_printf(b,
                  "{\"checkout_id\":\"%s\",\"status\":\"" CM_STATUS_PENDING "\",\"links\":{\"self\":"
                  "\"/api/checkouts/%s\",\"events\":\"/api/event-store/replay/checkout/%s\"}",
                  id, id, id);
    if (alias)
        cm_buf_printf(b, ",\"accepted\":true,\"follow\":\"/api/event-store/replay/checkout/%s\"", id);
    cm_buf_putc(b, '}');
}

/* BLAKE2b-256 of the body's canonical form (keys sorted, compact), in hex:
 * two bodies that parse to the same JSON hash the same. */
static void body_hash(json_t *root, char hex[65])
{
    char *canon = json_dumps(root, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENSURE_ASCII);
    unsigned char h[32];
    crypto_generichash(h, sizeof h, (const unsigned char *)(canon ? canon : ""), canon ? strlen(canon) : 0,
                       NULL, 0);
    free(canon);
    sodium_bin2hex(hex, 65, h, sizeof h);
}

/* Answers from a stored record "<hash>\n<checkout_id>\n<body>". */
static void replay(api_req *rq, const redisReply *rec, const char *hash)
{
    const char *s = rec->str, *end = rec->str + rec->len;
    const char *nl1 = memchr(s, '\n', rec->len);
    const char *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1)) : NULL;
    if (!nl2 || (size_t)(nl2 - nl1 - 1) > API_ID_MAX) {
        api_error(rq, 500, "internal_error", "the idempotency record of this key is corrupt");
        return;
    }
    if ((size_t)(nl1 - s) != 64 || memcmp(s, hash, 64) != 0) {
        api_error(rq, 409, "idempotency_conflict",
                  "this Idempotency-Key was used with a different body in the last 24 h");
        return;
    }
    memcpy(rq->checkout_id, nl1 + 1, (size_t)(nl2 - nl1 - 1));
    rq->checkout_id[nl2 - nl1 - 1] = '\0';
    snprintf(rq->location, sizeof rq->location, "/api/checkouts/%s", rq->checkout_id);
    cm_buf_reset(&rq->out);
    cm_buf_put(&rq->out, nl2 + 1, (size_t)(end - nl2 - 1));
    rq->replayed = true;
    cm_series_inc(g_replayed);
    api_reply(rq, 202);
}

/* Appends the event with the idempotency record; answers 202/409/503. */
static void append(api_req *rq, api_redis *t, json_t *root, const char *client, const line *lines, size_t n,
                   bool alias)
{
    char id[CM_UUID_LEN + 1];
    cm_uuid7(id);
    bool has_key = rq->idem_key[0] != '\0';
    char hash[65] = "";
    if (has_key)
        body_hash(root, hash);
    cm_buf body = CM_BUF_INIT;
    accepted_body(&body, id, alias);

    json_t *data = event_data(client, lines, n);
    es_new_event ev = {.type = cm_event_type_names[CM_EV_CHECKOUT_INITIATED], .data = data};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = id, .producer = "api",
                         .expected_version = 0, .events = &ev, .n = 1};
    cm_argv a = {0};
    cm_argv_addf(&a, CM_KEY_PREFIX "idem:%s", rq->idem_key);
    es_append_keys(t->st, "checkout", id, &a);
    cm_argv_adds(&a, has_key ? "1" : "0");
    cm_argv_adds(&a, hash);
    cm_argv_addf(&a, "%s\n%s", id, body.data);
    cm_argv_addll(&a, IDEM_TTL_S);
    if (es_append_args(&req, &a) != ES_OK) {
        api_error(rq, 500, "internal_error", "cannot encode the event");
        goto done;
    }
    redisReply *r = cm_script_call(t->c, &t->intake, 3, &a);
    if (!api_redis_ok(t, r)) {
        api_unavailable(rq, t->err);
        goto done;
    }
    const redisReply *st = cm_reply_elem(r, 0), *rec = cm_reply_elem(r, 1);
    if (cm_reply_is_str(st) && !strcmp(st->str, "replay") && rec && rec->type == REDIS_REPLY_STRING) {
        replay(rq, rec, hash);
    } else {
        es_append_res res;
        char err[256];
        if (es_append_parse(r, 1, &res, err, sizeof err) != ES_OK || res.duplicate) {
            api_error(rq, 500, "internal_error", "unexpected append result");
            cm_log(CM_ERROR, "intake: %s", err);
        } else {
            snprintf(rq->checkout_id, sizeof rq->checkout_id, "%s", id);
            snprintf(rq->location, sizeof rq->location, "/api/checkouts/%s", id);
            cm_buf_free(&rq->out);
            rq->out = body;
            body = (cm_buf)CM_BUF_INIT;
            cm_series_inc(g_published);
            cm_series_inc(g_accepted);
            api_reply(rq, 202);
        }
    }
    freeReplyObject(r);
done:
    cm_argv_free(&a);
    json_decref(data);
    cm_buf_free(&body);
}

static api_flow intake(api_req *rq, bool alias)
{
    json_error_t jerr;
    json_t *root = json_loadb(rq->body.data ? rq->body.data : "", rq->body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        api_error(rq, 400, "invalid_json", "malformed JSON at line %d column %d: %s", jerr.line, jerr.column,
                  jerr.text);
        return API_DONE;
    }
    if (alias) {
        /* the seed route takes the client from its path */
        if (!cm_id_valid(rq->param, rq->param_len, API_ID_MAX)) {
            api_error(rq, 400, "invalid_request", "client_id must be 1..64 characters of [A-Za-z0-9_-]");
            goto out;
        }
        if (json_is_object(root))
            json_object_set_new(root, "client_id", json_stringn(rq->param, rq->param_len));
    }
    const char *client = NULL;
    line lines[MAX_LINES];
    size_t n = 0;
    if (!validate(rq, root, &client, lines, &n))
        goto out;
    const char *why = NULL;
    api_redis *t = api_redis_get(&why);
    if (!t) {
        api_unavailable(rq, why);
        goto out;
    }
    if (price_lines(rq, t, lines, n) != 0)
        goto out;
    append(rq, t, root, client, lines, n, alias);
out:
    json_decref(root);
    return API_DONE;
}

api_flow api_h_checkout_post(api_req *rq)
{
    return intake(rq, false);
}

api_flow api_h_checkout_alias(api_req *rq)
{
    return intake(rq, true);
}
