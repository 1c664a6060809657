/* intake.c - POST /api/checkouts (and the seed alias): validate, then price
 * and append CheckoutInitiated in one script, answer 202.
 *
 * Everything a client can get wrong is checked before anything is written:
 * JSON, fields, id charset and length, quantities, line count (the server
 * already checked body size, Content-Type and Idempotency-Key). Then one
 * script (lua/intake.lua), in one round trip (pipelined with the other
 * intakes of the moment by batch.c), checks the idempotency key,
 * reads every line's price from the catalog (an unknown product is 422 and
 * nothing is written), builds the event's data, appends CheckoutInitiated and
 * records the key, atomically. Pricing inside the script instead of in a
 * pipelined round trip before it halves the Redis round trips of an intake
 * (two loopback messages and their syscalls on both sides: the bulk of its
 * CPU cost). Only the script's success is answered 202, so a 202 always means
 * the event is in Redis; when Redis cannot take it the answer is 503 and the
 * client retries with the same key. */
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

/* Prepares the intake script's call for a validated body. Returns the job
 * (caller owns it), or NULL after answering 500. */
static api_job *make_job(api_req *rq, json_t *root, const char *client, const line *lines, size_t n, bool alias)
{
    api_job *j = cm_xcalloc(1, sizeof *j);
    j->conn = rq->conn;
    char *id = j->checkout_id;
    cm_uuid7(id);
    bool has_key = rq->idem_key[0] != '\0';
    if (has_key)
        body_hash(root, j->hash);
    accepted_body(&j->body, id, alias);

    /* The event id is derived from the (fresh, random) checkout id: unique
     * too, and one getrandom(2) cheaper than a second UUIDv7. The data is
     * left out here (NULL encodes as {}) and built by the script. */
    char event_id[CM_UUID_LEN + 1];
    cm_uuid_derive(id, cm_event_type_names[CM_EV_CHECKOUT_INITIATED], event_id);
    es_new_event ev = {.event_id = event_id, .type = cm_event_type_names[CM_EV_CHECKOUT_INITIATED]};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = id, .producer = "api",
                         .expected_version = 0, .events = &ev, .n = 1};
    cm_argv *a = &j->argv;
    char hist[128];
    es_history_key("checkout", id, hist, sizeof hist);
    cm_argv_addf(a, CM_KEY_PREFIX "idem:%s", rq->idem_key);
    cm_argv_adds(a, hist);
    cm_argv_adds(a, g_api.bus);
    for (size_t i = 0; i < n; i++)
        cm_argv_addf(a, CM_KEY_PREFIX "product:%s", lines[i].product_id);
    j->nkeys = a->n;
    cm_argv_adds(a, has_key ? "1" : "0");
    cm_argv_adds(a, j->hash);
    cm_argv_addf(a, "%s\n%s", id, j->body.data);
    cm_argv_addll(a, IDEM_TTL_S);
    cm_argv_adds(a, client);
    cm_argv_addll(a, (long long)n);
    for (size_t i = 0; i < n; i++) {
        cm_argv_adds(a, lines[i].product_id);
        cm_argv_addll(a, lines[i].qty);
    }
    static const char empty_data[] = "{}}";
    if (es_append_args(&req, a) != ES_OK || a->len[a->n - 1] < 3 ||
        memcmp(a->v[a->n - 1] + a->len[a->n - 1] - 3, empty_data, 3) != 0) {
        api_error(rq, 500, "internal_error", "cannot encode the event");
        api_job_free(j);
        return NULL;
    }
    a->len[a->n - 1] -= 3;   /* the tail now ends with "data": for the script to complete */
    a->v[a->n - 1][a->len[a->n - 1]] = '\0';
    return j;
}

/* Answers from the script's reply: 202 (new or replayed), 409, 422, 503. */
static void finish(api_req *rq, api_job *j)
{
    redisReply *r = j->reply;
    if (!r) {
        api_unavailable(rq, j->err);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        api_redis_failed(rq, NULL, r, NULL);   /* 503 if a retry may help, else 500 */
        return;
    }
    const redisReply *st = cm_reply_elem(r, 0), *arg = cm_reply_elem(r, 1);
    if (cm_reply_is_str(st) && !strcmp(st->str, "replay") && arg && arg->type == REDIS_REPLY_STRING) {
        replay(rq, arg, j->hash);
        return;
    }
    if (cm_reply_is_str(st) && !strcmp(st->str, "unknown") && cm_reply_is_str(arg)) {
        api_error(rq, 422, "unknown_product", "product %s is not in the catalog", arg->str);
        return;
    }
    es_append_res res;
    char err[256];
    if (es_append_parse(r, 1, &res, err, sizeof err) != ES_OK || res.duplicate) {
        api_error(rq, 500, "internal_error", "unexpected append result");
        cm_log(CM_ERROR, "intake: %s", err);
        return;
    }
    snprintf(rq->checkout_id, sizeof rq->checkout_id, "%s", j->checkout_id);
    snprintf(rq->location, sizeof rq->location, "/api/checkouts/%s", j->checkout_id);
    cm_buf_free(&rq->out);
    rq->out = j->body;
    j->body = (cm_buf)CM_BUF_INIT;
    cm_series_inc(g_published);
    cm_series_inc(g_accepted);
    api_reply(rq, 202);
}

/* Runs the job on this thread's own connection (the batcher is stopping). */
static void run_here(api_job *j)
{
    const char *why = NULL;
    api_redis *t = api_redis_get(&why);
    if (!t) {
        snprintf(j->err, sizeof j->err, "%s", why);
        return;
    }
    redisReply *r = cm_script_call(t->c, &t->intake, j->nkeys, &j->argv);
    if (!r || t->c->err) {
        snprintf(j->err, sizeof j->err, "redis: %s", t->c->err ? t->c->errstr : "no reply");
        if (r)
            freeReplyObject(r);
        api_redis_drop(t);
        return;
    }
    j->reply = r;
}

static api_flow intake(api_req *rq, bool alias)
{
    if (rq->job) {   /* resumed: the batcher ran the script */
        finish(rq, rq->job);
        return API_DONE;
    }
    json_error_t jerr;
    json_t *root = json_loadb(rq->body.data ? rq->body.data : "", rq->body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        api_error(rq, 400, "invalid_json", "malformed JSON at line %d column %d: %s", jerr.line, jerr.column,
                  jerr.text);
        return API_DONE;
    }
    api_flow flow = API_DONE;
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
    rq->job = make_job(rq, root, client, lines, n, alias);
    if (!rq->job)
        goto out;
    if (api_batch_submit(rq->job)) {
        flow = API_SUSPENDED;
    } else {
        run_here(rq->job);
        finish(rq, rq->job);
    }
out:
    json_decref(root);
    return flow;
}

api_flow api_h_checkout_post(api_req *rq)
{
    return intake(rq, false);
}

api_flow api_h_checkout_alias(api_req *rq)
{
    return intake(rq, true);
}
