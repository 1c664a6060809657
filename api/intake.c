/* intake.c - POST /api/checkouts (and the seed alias): validate, price and
 * append CheckoutInitiated in one script, answer 202.
 *
 * Everything a client can get wrong is checked before anything is written:
 * JSON, fields, id charset and length, quantities, line count (the server
 * already checked body size, Content-Type and Idempotency-Key). The handler
 * then hands the job to the batcher (batch.c), which reads the prices of
 * the batch's products from the catalog (one pipelined HMGET per product,
 * each in its product's slot), builds each event whole with those prices
 * (api_job_build), and sends every job's script (lua/intake.lua) in one
 * pipeline. The script, in the checkout's slot alone, checks the
 * idempotency key and appends CheckoutInitiated with the key's record,
 * atomically; a line whose product is unknown (422) or whose catalog entry
 * is broken (500) is refused by the same call, which then writes nothing but
 * still answers a recorded key. So a checkout is priced at the catalog price
 * of a moment between its arrival and its 202. Only the script's success is
 * answered 202, so a 202 always means the event is in Redis (and, with
 * REDIS_WAIT_REPLICAS=N, confirmed by N replicas: see unconfirmed()); when
 * Redis cannot take it the answer is 503 and the client retries with the
 * same key. */
#include "api/api_int.h"
#include "api/lua/intake.h"
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
static cm_series *g_wait_short;  /* intake_replica_waits_short_total */

void api_intake_metrics_init(void)
{
    char labels[300];
    cm_metrics_labels(labels, sizeof labels, "topic", g_api.bus, "type",
                      cm_event_type_names[CM_EV_CHECKOUT_INITIATED], (char *)NULL);
    g_published = cm_counter("events_published_total", "events appended to the bus", labels);
    g_accepted = cm_counter("checkouts_accepted_total", "checkouts accepted (202, new saga)", NULL);
    g_replayed = cm_counter("checkout_idempotent_replays_total",
                            "checkouts answered from an idempotency record (no new saga)", NULL);
    g_wait_short = cm_counter("intake_replica_waits_short_total",
                              "intakes answered 503 because fewer than REDIS_WAIT_REPLICAS replicas confirmed "
                              "them in time (the record is written: a retry with the key answers it)", NULL);
}

/* With REDIS_WAIT_REPLICAS: true after answering 503 when fewer replicas
 * than asked confirmed the job's writes. The checkout is in the master, so
 * a retry with the same Idempotency-Key answers the same checkout (and
 * waits for the replicas again). */
static bool unconfirmed(api_req *rq, const api_job *j)
{
    if (g_api.wait_replicas <= 0 || j->replicas >= g_api.wait_replicas)
        return false;
    cm_series_inc(g_wait_short);
    cm_log_limited(CM_WARN, "intake-wait-short",
                   "intake: %lld of %lld replicas confirmed checkout %s within %lld ms; answered 503",
                   j->replicas < 0 ? 0 : j->replicas, (long long)g_api.wait_replicas, j->checkout_id,
                   (long long)g_api.wait_timeout_ms);
    api_error(rq, 503, "unavailable",
              "the checkout is stored but was not confirmed on %lld replica(s) within %lld ms; retry with the same "
              "Idempotency-Key",
              (long long)g_api.wait_replicas, (long long)g_api.wait_timeout_ms);
    return true;
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

/* Answers from a stored record "<hash>\n<checkout_id>\n<route letter>" (or, written
 * before the letter, "...\n<body>"): the same 202 as the first time. */
static void replay(api_req *rq, const redisReply *rec, const api_job *j)
{
    const char *hash = j->hash;
    const char *s = rec->str, *end = rec->str + rec->len;
    const char *nl1 = memchr(s, '\n', rec->len);
    const char *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1)) : NULL;
    if (!nl2 || (size_t)(nl2 - nl1 - 1) > API_ID_MAX) {
        api_error(rq, 500, "internal", "the idempotency record of this key is corrupt");
        return;
    }
    if ((size_t)(nl1 - s) != 64 || memcmp(s, hash, 64) != 0) {
        api_error(rq, 409, "idempotency_conflict",
                  "this Idempotency-Key was used with a different body in the last 24 h");
        return;
    }
    if (unconfirmed(rq, j))   /* the record may be one a 503 left behind */
        return;
    memcpy(rq->checkout_id, nl1 + 1, (size_t)(nl2 - nl1 - 1));
    rq->checkout_id[nl2 - nl1 - 1] = '\0';
    snprintf(rq->location, sizeof rq->location, "/api/checkouts/%s", rq->checkout_id);
    cm_buf_reset(&rq->out);
    size_t rest = (size_t)(end - nl2 - 1);
    if (rest == 1 && (nl2[1] == 'a' || nl2[1] == 'c'))   /* the route it came by: the body again */
        accepted_body(&rq->out, rq->checkout_id, nl2[1] == 'a');
    else                                                  /* a record with the body itself (older) */
        cm_buf_put(&rq->out, nl2 + 1, rest);
    rq->replayed = true;
    cm_series_inc(g_replayed);
    api_reply(rq, 202);
}

int api_job_build(api_job *j)
{
    api_intake_line lines[API_INTAKE_MAX_LINES];
    for (size_t i = 0; i < j->nlines; i++)
        lines[i] = (api_intake_line){j->lines[i].product_id, j->lines[i].qty, j->lines[i].price};
    api_intake_call call = {.checkout_id = j->checkout_id, .client_id = j->client_id, .idem_key = j->idem_key,
                            .body_hash = j->hash, .answer = j->alias ? "a" : "c", .idem_ttl_s = IDEM_TTL_S,
                            .bus = g_api.bus, .lines = lines, .n = j->nlines,
                            .refused = j->refused_line < 0 ? 0 : (size_t)j->refused_line + 1,
                            .confirm = g_api.wait_replicas > 0};
    cm_argv_reset(&j->argv);
    return api_intake_build(&call, &j->argv, &j->nkeys);
}

/* Prepares the intake of a validated body (priced later, by the batcher).
 * Returns the job (caller owns it). */
static api_job *make_job(api_req *rq, json_t *root, const char *client, const line *lines, size_t n, bool alias)
{
    api_job *j = cm_xcalloc(1, sizeof *j);
    j->conn = rq->conn;
    j->refused_line = -1;
    if (rq->idem_key[0])   /* the new checkout goes where its idempotency record is */
        cm_partition_id(cm_partition_of_idem(client, rq->idem_key), j->checkout_id);
    else
        cm_uuid7(j->checkout_id);
    if (rq->idem_key[0])
        body_hash(root, j->hash);
    accepted_body(&j->body, j->checkout_id, alias);
    j->alias = alias;
    snprintf(j->client_id, sizeof j->client_id, "%s", client);
    snprintf(j->idem_key, sizeof j->idem_key, "%s", rq->idem_key);
    j->nlines = n;
    for (size_t i = 0; i < n; i++) {
        snprintf(j->lines[i].product_id, sizeof j->lines[i].product_id, "%s", lines[i].product_id);
        j->lines[i].qty = lines[i].qty;
    }
    return j;
}

/* Runs the job on this thread's own client (the batcher is stopping). */
static void run_here(api_job *j)
{
    const char *why = NULL;
    api_redis *t = api_redis_get(&why);
    if (!t) {
        snprintf(j->err, sizeof j->err, "%s", why);
        return;
    }
    api_intake_run(t->cc, &t->intake, &j, 1);
}

/* Answers from the script's reply: 202 (new or replayed), 409, 422, 500, 503. */
static api_flow finish(api_req *rq, api_job *j)
{
    redisReply *r = j->reply;
    if (!r) {
        if (j->permanent)
            api_redis_fail(rq, CM_REDIS_PERMANENT, j->err);
        else
            api_unavailable(rq, j->err);
        return API_DONE;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        api_redis_failed(rq, r, NULL);   /* 503 if a retry may help, else 500 */
        return API_DONE;
    }
    api_intake_call call = {.checkout_id = j->checkout_id, .client_id = j->client_id, .n = j->nlines,
                            .refused = j->refused_line < 0 ? 0 : (size_t)j->refused_line + 1};
    api_intake_reply v;
    api_intake_parse(r, &call, &v);
    switch (v.verdict) {
    case API_INTAKE_REPLAY: {
        redisReply rec = {.type = REDIS_REPLY_STRING, .str = (char *)v.record, .len = v.record_len};
        replay(rq, &rec, j);
        return API_DONE;
    }
    case API_INTAKE_REFUSED:
        if (j->refused_broken)
            api_redis_fail(rq, CM_REDIS_PERMANENT, j->refused_why);
        else
            api_error(rq, 422, "unknown_product", "product %s is not in the catalog",
                      j->lines[j->refused_line].product_id);
        return API_DONE;
    case API_INTAKE_ACCEPTED:
        break;
    default:
        api_error(rq, 500, "internal", "unexpected append result");
        cm_log(CM_ERROR, "intake: %s", v.err);
        return API_DONE;
    }
    if (unconfirmed(rq, j))
        return API_DONE;
    snprintf(rq->checkout_id, sizeof rq->checkout_id, "%s", j->checkout_id);
    snprintf(rq->location, sizeof rq->location, "/api/checkouts/%s", j->checkout_id);
    cm_buf_free(&rq->out);
    rq->out = j->body;
    j->body = (cm_buf)CM_BUF_INIT;
    cm_series_inc(g_published);
    cm_series_inc(g_accepted);
    api_reply(rq, 202);
    return API_DONE;
}

static api_flow intake(api_req *rq, bool alias)
{
    if (rq->job)   /* resumed: the batcher ran the script */
        return finish(rq, rq->job);
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
    if (api_batch_submit(rq->job)) {
        flow = API_SUSPENDED;
    } else {
        run_here(rq->job);
        flow = finish(rq, rq->job);
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
