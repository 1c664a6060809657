/* test_console_api.c - the JSON routes behind the web console, and the
 * console's files, over real sockets against a real chorus-api and
 * redis-server (no workers: the tests set each group's state by hand with
 * the same Redis commands a worker would use, so every state is certain).
 *
 *   timeline     causal order (not seq order), depth, branch, hop_ms, and
 *                each group's state: done, in_flight (consumer, deliveries,
 *                idle), parked (reason, also when re-parked after a retry),
 *                undelivered (past the group's last-delivered id, or no group)
 *   client list  newest first, status and reason from the read models,
 *                count bounds
 *   saga stats   started / succeeded / failed by reason in the window
 *   bulk retry   POST /api/dead-letters/retry moves count of a group's
 *   /ui/         types, ETag + 304, 404 for unknown files, 405 */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/names.h"
#include "event_store/store.h"
#include "tests/e2e/api_env.h"

static api_env E;

static void setup(void)
{
    ae_setup(&E, NULL, AE_TOKEN, NULL);
    ae_product(&E, "p1", 1250, 100);
}

static void teardown(void)
{
    ae_teardown(&E);
}

TestSuite(console, .init = setup, .fini = teardown, .timeout = 120);

#define ADMIN "Content-Type: application/json\r\nAuthorization: Bearer " AE_TOKEN "\r\n"

static json_t *get_json(const char *path, int want_status)
{
    tf_http_resp r;
    ae_req(&E, "GET", path, NULL, NULL, &r);
    cr_assert_eq(r.status, want_status, "GET %s: %d %s", path, r.status, r.body);
    json_t *j = ae_json(&r);
    tf_http_resp_free(&r);
    return j;
}

static void expect_error(const char *method, const char *path, const char *headers, const char *body, int status,
                         const char *code)
{
    tf_http_resp r;
    ae_req(&E, method, path, headers, body, &r);
    ae_assert_error(&r, status, code);
    tf_http_resp_free(&r);
}

/* Appends one event of type caused by cause to checkout id; returns its
 * event id and bus id. */
static void append(es_store *s, const char *id, const char *type, const char *cause, json_t *data, char *event_id,
                   char *entry_id)
{
    es_new_event ev = {.type = type, .causation_id = cause, .data = data};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = id, .producer = "test",
                         .expected_version = ES_ANY_VERSION, .events = &ev, .n = 1};
    es_append_res res;
    cr_assert_eq(es_append(s, &req, &res), ES_OK, "append %s: %s", type, es_store_errstr(s));
    json_decref(data);
    snprintf(event_id, 37, "%s", res.pos[0].event_id);
    snprintf(entry_id, 48, "%s", res.pos[0].entry_id);
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* The group object named g in an event's groups array. */
static json_t *group_of(json_t *ev, const char *g)
{
    json_t *gs = json_object_get(ev, "groups"), *x;
    size_t i;
    json_array_foreach(gs, i, x) {
        if (!strcmp(jstr(x, "group"), g))
            return x;
    }
    cr_assert_fail("no group %s", g);
    return NULL;
}

static void expect_state(json_t *ev, const char *g, const char *state)
{
    json_t *x = group_of(ev, g);
    cr_assert_str_eq(jstr(x, "state"), state, "%s in %s: %s, expected %s", jstr(ev, "type"), g, jstr(x, "state"),
                     state);
}

static double emitted_at(json_t *ev)
{
    return json_number_value(json_object_get(json_object_get(ev, "payload"), "emitted_at"));
}

Test(console, timeline_is_causal_with_hops_and_every_groups_state)
{
    char id[65];
    ae_checkout(&E, "cl-1", "p1", 2, id);
    char err[256];
    es_store *s = es_store_new(E.c, AE_BUS, err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    es_event **h = NULL;
    size_t n = 0;
    cr_assert_eq(es_history_read(s, "checkout", id, &h, &n), ES_OK);
    cr_assert_eq(n, 1);
    char ev_i[37], bus_i[48], ev_r[37], bus_r[48], ev_t[37], bus_t[48], ev_o[37], bus_o[48];
    snprintf(ev_i, sizeof ev_i, "%s", h[0]->event_id);
    snprintf(bus_i, sizeof bus_i, "%s", h[0]->entry_id);
    es_events_free(h, n);
    /* seq order I R T O; causal order I R O T (O is R's effect, T is I's) */
    append(s, id, "StockReserved", ev_i, json_pack("{s:s}", "client_id", "cl-1"), ev_r, bus_r);
    append(s, id, "CheckoutTimedOut", ev_i, json_pack("{s:i}", "after_ms", 5000), ev_t, bus_t);
    append(s, id, "OrderCreated", ev_r, json_pack("{s:s}", "order_id", "o-1"), ev_o, bus_o);
    es_store_free(s);

    /* reservation: read I only (pending with consumer c-7), nothing after */
    freeReplyObject(ae_cmd(&E, "XGROUP CREATE " AE_BUS " choreo-reservation 0"));
    freeReplyObject(ae_cmd(&E, "XREADGROUP GROUP choreo-reservation c-7 COUNT 1 STREAMS " AE_BUS " >"));
    /* order: read all four, acknowledged all but O */
    freeReplyObject(ae_cmd(&E, "XGROUP CREATE " AE_BUS " choreo-order 0"));
    freeReplyObject(ae_cmd(&E, "XREADGROUP GROUP choreo-order c-8 COUNT 10 STREAMS " AE_BUS " >"));
    cr_assert_eq(ae_int(&E, "XACK " AE_BUS " choreo-order %s %s %s", bus_i, bus_r, bus_t), 3);
    /* compensation, notification, cqrs: everything delivered and acknowledged */
    freeReplyObject(ae_cmd(&E, "XGROUP CREATE " AE_BUS " choreo-compensation $"));
    freeReplyObject(ae_cmd(&E, "XGROUP CREATE " AE_BUS " choreo-notification $"));
    freeReplyObject(ae_cmd(&E, "XGROUP CREATE " AE_BUS " choreo-cqrs $"));
    /* notification parked T (the fields es_dlq_park writes) */
    freeReplyObject(ae_cmd(&E,
                           "XADD " AE_BUS ".dlq.choreo-notification * group choreo-notification reason boom "
                           "attempts 3 stream " AE_BUS " entry_id %s type CheckoutTimedOut payload x ts 1",
                           bus_t));
    /* cqrs parked R again after a retry: the entry id is the retry
     * stream's, the payload (R's envelope, which names I as its cause) is
     * what identifies it */
    redisReply *x = ae_cmd(&E, "XRANGE " AE_BUS " %s %s", bus_r, bus_r);
    const redisReply *f = x->element[0]->element[1];
    const char *payload = NULL;
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (!strcmp(f->element[i]->str, "payload"))
            payload = f->element[i + 1]->str;
    cr_assert_not_null(payload);
    freeReplyObject(ae_cmd(&E,
                           "XADD " AE_BUS ".dlq.choreo-cqrs * group choreo-cqrs reason again attempts 5 "
                           "stream " AE_BUS ".retry.choreo-cqrs entry_id 99-0 type StockReserved payload %s ts 1",
                           payload));
    freeReplyObject(x);
    /* audit: no group at all */

    char path[160];
    snprintf(path, sizeof path, "/api/checkouts/%s/timeline", id);
    json_t *j = get_json(path, 200);
    cr_assert_str_eq(jstr(j, "checkout_id"), id);
    cr_assert(json_is_string(json_object_get(j, "status")));
    json_t *evs = json_object_get(j, "events");
    cr_assert_eq(json_array_size(evs), 4);
    const char *types[] = {"CheckoutInitiated", "StockReserved", "OrderCreated", "CheckoutTimedOut"};
    const char *bus[] = {bus_i, bus_r, bus_o, bus_t};
    const int depth[] = {0, 1, 2, 1};
    const char *branch[] = {"main", "main", "main", "compensation"};
    const int cause[] = {-1, 0, 1, 0};
    for (int i = 0; i < 4; i++) {
        json_t *e = json_array_get(evs, (size_t)i);
        cr_assert_str_eq(jstr(e, "type"), types[i], "event %d", i);
        cr_assert_str_eq(jstr(e, "id"), bus[i]);
        cr_assert(json_is_object(json_object_get(e, "payload")));
        cr_assert(json_is_number(json_object_get(e, "ts")));
        cr_assert_eq(json_integer_value(json_object_get(e, "depth")), depth[i], "%s depth", types[i]);
        cr_assert_str_eq(jstr(e, "branch"), branch[i], "%s branch", types[i]);
        json_t *hop = json_object_get(e, "hop_ms");
        if (cause[i] < 0) {
            cr_assert(json_is_null(hop), "the root's hop_ms is null");
        } else {
            double want = (emitted_at(e) - emitted_at(json_array_get(evs, (size_t)cause[i]))) * 1e3;
            cr_assert(json_is_number(hop) && fabs(json_number_value(hop) - want) < 0.01, "%s hop_ms %f, expected %f",
                      types[i], json_number_value(hop), want);
        }
        cr_assert_eq(json_array_size(json_object_get(e, "groups")), 6);
        for (int g = 0; g < CM_W_COUNT; g++)
            cr_assert_str_eq(jstr(json_array_get(json_object_get(e, "groups"), (size_t)g), "group"),
                             cm_group_names[g]);
    }
    json_t *ei = json_array_get(evs, 0), *er = json_array_get(evs, 1), *eo = json_array_get(evs, 2),
           *et = json_array_get(evs, 3);

    json_t *g = group_of(ei, "choreo-reservation");
    cr_assert_str_eq(jstr(g, "state"), "in_flight");
    cr_assert_str_eq(jstr(g, "consumer"), "c-7");
    cr_assert_eq(json_integer_value(json_object_get(g, "deliveries")), 1);
    cr_assert(json_is_integer(json_object_get(g, "idle_ms")));
    expect_state(er, "choreo-reservation", "undelivered");
    expect_state(eo, "choreo-reservation", "undelivered");
    expect_state(et, "choreo-reservation", "undelivered");

    expect_state(ei, "choreo-order", "done");
    expect_state(er, "choreo-order", "done");
    expect_state(et, "choreo-order", "done");
    g = group_of(eo, "choreo-order");
    cr_assert_str_eq(jstr(g, "state"), "in_flight");
    cr_assert_str_eq(jstr(g, "consumer"), "c-8");

    for (int i = 0; i < 4; i++) {
        json_t *e = json_array_get(evs, (size_t)i);
        expect_state(e, "choreo-compensation", "done");
        expect_state(e, "choreo-audit", "undelivered");
    }

    g = group_of(et, "choreo-notification");
    cr_assert_str_eq(jstr(g, "state"), "parked");
    cr_assert_str_eq(jstr(g, "reason"), "boom");
    cr_assert_eq(json_integer_value(json_object_get(g, "deliveries")), 3);
    expect_state(ei, "choreo-notification", "done");
    expect_state(er, "choreo-notification", "done");

    g = group_of(er, "choreo-cqrs");
    cr_assert_str_eq(jstr(g, "state"), "parked");
    cr_assert_str_eq(jstr(g, "reason"), "again");
    expect_state(ei, "choreo-cqrs", "done");   /* named as R's cause only: not parked */
    expect_state(eo, "choreo-cqrs", "done");
    json_decref(j);
}

Test(console, timeline_of_an_unknown_or_malformed_id_is_404)
{
    expect_error("GET", "/api/checkouts/nope-never/timeline", NULL, NULL, 404, "not_found");
    expect_error("GET", "/api/checkouts/bad!id/timeline", NULL, NULL, 404, "not_found");
    expect_error("POST", "/api/checkouts/x/timeline", NULL, NULL, 405, "method_not_allowed");
}

/* A read model as the projection writes it, and its place in the client index. */
static void read_model(const char *client, const char *id, double initiated, const char *status, const char *reason)
{
    freeReplyObject(ae_cmd(&E, "ZADD " CM_KEY_CLIENT_CHECKOUTS "%s %f %s", client, initiated, id));
    freeReplyObject(ae_cmd(&E, "HSET " CM_KEY_PREFIX "rm:checkout:%s checkout_id %s client_id %s status %s "
                               "updated_at %f", id, id, client, status, initiated + 0.5));
    if (reason)
        freeReplyObject(ae_cmd(&E, "HSET " CM_KEY_PREFIX "rm:checkout:%s reason %s", id, reason));
}

Test(console, client_checkouts_are_newest_first_with_status_and_reason)
{
    read_model("cl-9", "co-a", 1700000001.0, CM_STATUS_SUCCEEDED, NULL);
    read_model("cl-9", "co-b", 1700000003.0, CM_STATUS_FAILED, CM_REASON_INSUFFICIENT_STOCK);
    read_model("cl-9", "co-c", 1700000002.0, CM_STATUS_PENDING, NULL);
    read_model("cl-other", "co-z", 1700000009.0, CM_STATUS_PENDING, NULL);
    /* in the index but its read model expired: left out */
    freeReplyObject(ae_cmd(&E, "ZADD " CM_KEY_CLIENT_CHECKOUTS "cl-9 1700000000 co-gone"));

    json_t *j = get_json("/api/clients/cl-9/checkouts", 200);
    cr_assert_str_eq(jstr(j, "client_id"), "cl-9");
    json_t *cs = json_object_get(j, "checkouts");
    cr_assert_eq(json_array_size(cs), 3, "%s", json_dumps(j, 0));
    const char *ids[] = {"co-b", "co-c", "co-a"};
    const char *st[] = {CM_STATUS_FAILED, CM_STATUS_PENDING, CM_STATUS_SUCCEEDED};
    for (size_t i = 0; i < 3; i++) {
        json_t *c = json_array_get(cs, i);
        cr_assert_str_eq(jstr(c, "checkout_id"), ids[i]);
        cr_assert_str_eq(jstr(c, "status"), st[i]);
        cr_assert(json_is_number(json_object_get(c, "updated_at")));
        cr_assert_eq(json_object_get(c, "reason") != NULL, i == 0, "reason only on the failed one");
    }
    cr_assert_str_eq(jstr(json_array_get(cs, 0), "reason"), CM_REASON_INSUFFICIENT_STOCK);
    json_decref(j);

    j = get_json("/api/clients/cl-9/checkouts?count=1", 200);
    cr_assert_eq(json_array_size(json_object_get(j, "checkouts")), 1);
    cr_assert_str_eq(jstr(json_array_get(json_object_get(j, "checkouts"), 0), "checkout_id"), "co-b");
    json_decref(j);

    j = get_json("/api/clients/nobody/checkouts?count=100", 200);
    cr_assert_eq(json_array_size(json_object_get(j, "checkouts")), 0);
    json_decref(j);
}

Test(console, client_checkouts_refuse_a_bad_count_or_client_id)
{
    const char *bad[] = {"0", "101", "abc", "-1", "", "1.5", "20x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[96];
        snprintf(path, sizeof path, "/api/clients/cl-1/checkouts?count=%s", bad[i]);
        expect_error("GET", path, NULL, NULL, 400, "invalid_request");
    }
    expect_error("GET", "/api/clients/bad!client/checkouts", NULL, NULL, 400, "invalid_request");
    expect_error("GET",
                 "/api/clients/0123456789012345678901234567890123456789012345678901234567890123456789/checkouts",
                 NULL, NULL, 400, "invalid_request");
}

Test(console, saga_stats_count_the_window_by_outcome_and_reason)
{
    char id1[65], id2[65], e[37], b[48], err[256];
    ae_checkout(&E, "cl-1", "p1", 1, id1);
    ae_checkout(&E, "cl-2", "p1", 1, id2);
    es_store *s = es_store_new(E.c, AE_BUS, err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    append(s, id1, "CheckoutSucceeded", NULL, json_pack("{s:s}", "order_id", "o-1"), e, b);
    append(s, id2, "CheckoutFailed", NULL, json_pack("{s:s}", "reason", CM_REASON_INSUFFICIENT_STOCK), e, b);
    es_store_free(s);

    json_t *j = get_json("/api/stats/sagas?window_s=600", 200);
    cr_assert_eq(json_integer_value(json_object_get(j, "window_s")), 600);
    cr_assert_eq(json_integer_value(json_object_get(j, "started")), 2);
    cr_assert_eq(json_integer_value(json_object_get(j, "succeeded")), 1);
    cr_assert_eq(json_integer_value(json_object_get(j, "failed")), 1);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(j, "failed_by_reason"),
                                                    CM_REASON_INSUFFICIENT_STOCK)), 1);
    cr_assert(json_is_false(json_object_get(j, "truncated")));
    json_decref(j);
    expect_error("GET", "/api/stats/sagas?window_s=0", NULL, NULL, 400, "invalid_request");
    expect_error("GET", "/api/stats/sagas?window_s=3601", NULL, NULL, 400, "invalid_request");
    expect_error("GET", "/api/stats/sagas?window_s=x", NULL, NULL, 400, "invalid_request");
}

Test(console, bulk_retry_redelivers_count_of_a_groups_dead_letters)
{
    for (int i = 0; i < 3; i++)
        freeReplyObject(ae_cmd(&E, "XADD " AE_BUS ".dlq.choreo-audit * group choreo-audit reason r%d attempts 1 "
                                   "stream " AE_BUS " entry_id %d-0 type X payload x ts 1", i, i + 1));
    tf_http_resp r;
    ae_req(&E, "POST", "/api/dead-letters/retry", ADMIN, "{\"group\":\"choreo-audit\",\"count\":2}", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert_str_eq(r.body, "{\"retried\":2}");
    tf_http_resp_free(&r);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS ".dlq.choreo-audit"), 1);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS ".retry.choreo-audit"), 2);

    expect_error("POST", "/api/dead-letters/retry", ADMIN, "{\"group\":\"choreo-nope\",\"count\":2}", 400,
                 "invalid_request");
    expect_error("POST", "/api/dead-letters/retry", ADMIN, "{\"group\":\"choreo-audit\",\"count\":0}", 400,
                 "invalid_request");
    expect_error("POST", "/api/dead-letters/retry", ADMIN, "{\"group\":\"choreo-audit\",\"count\":1001}", 400,
                 "invalid_request");
    expect_error("POST", "/api/dead-letters/retry", ADMIN, "{\"group\":", 400, "invalid_json");
    expect_error("POST", "/api/dead-letters/retry", "Content-Type: application/json\r\n",
                 "{\"group\":\"choreo-audit\",\"count\":1}", 401, "unauthorized");
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS ".dlq.choreo-audit"), 1, "refused requests moved nothing");
}

Test(console, ui_files_are_served_with_their_type_and_etag)
{
    const char *paths[] = {"/ui/", "/ui"};
    for (int i = 0; i < 2; i++) {
        tf_http_resp r;
        ae_req(&E, "GET", paths[i], NULL, NULL, &r);
        cr_assert_eq(r.status, 200, "%s: %d", paths[i], r.status);
        char v[256];
        cr_assert_not_null(tf_http_header(&r, "Content-Type", v, sizeof v));
        cr_assert_str_eq(v, "text/html; charset=utf-8");
        cr_assert_not_null(strstr(r.body, "id=\"js-errors\""));
        cr_assert_not_null(strstr(r.body, "/ui/app.js"));
        cr_assert_not_null(tf_http_header(&r, "Content-Security-Policy", v, sizeof v));
        tf_http_resp_free(&r);
    }
    const char *files[][2] = {{"/ui/app.js", "text/javascript; charset=utf-8"},
                              {"/ui/style.css", "text/css; charset=utf-8"}};
    for (int i = 0; i < 2; i++) {
        tf_http_resp r;
        ae_req(&E, "GET", files[i][0], NULL, NULL, &r);
        cr_assert_eq(r.status, 200);
        char v[256], etag[128], hdr[200];
        cr_assert_not_null(tf_http_header(&r, "Content-Type", v, sizeof v));
        cr_assert_str_eq(v, files[i][1]);
        cr_assert(r.body_len > 100);
        cr_assert_not_null(tf_http_header(&r, "ETag", etag, sizeof etag));
        cr_assert_not_null(tf_http_header(&r, "Cache-Control", v, sizeof v));
        cr_assert_str_eq(v, "no-cache");
        tf_http_resp_free(&r);
        snprintf(hdr, sizeof hdr, "If-None-Match: %s\r\n", etag);
        ae_req(&E, "GET", files[i][0], hdr, NULL, &r);
        cr_assert_eq(r.status, 304, "revalidation with the current ETag");
        cr_assert_eq(r.body_len, 0);
        tf_http_resp_free(&r);
        ae_req(&E, "GET", files[i][0], "If-None-Match: \"stale\"\r\n", NULL, &r);
        cr_assert_eq(r.status, 200, "a stale ETag gets the file");
        tf_http_resp_free(&r);
    }
    expect_error("GET", "/ui/missing.js", NULL, NULL, 404, "not_found");
    expect_error("GET", "/ui/../api/workers", NULL, NULL, 404, "not_found");
    expect_error("GET", "/ui/a/b.js", NULL, NULL, 404, "not_found");
    expect_error("POST", "/ui/app.js", NULL, NULL, 405, "method_not_allowed");
}

/* Dead-letter ids are per stream: two groups can hold the same id, and
 * ?group= picks which one is retried. */
Test(console, retry_one_with_group_picks_that_groups_entry)
{
    const char *groups[] = {"choreo-order", "choreo-audit"};
    for (int i = 0; i < 2; i++)
        freeReplyObject(ae_cmd(&E, "XADD " AE_BUS ".dlq.%s 5-0 group %s reason r attempts 1 stream " AE_BUS
                                   " entry_id 1-0 type X payload x ts 1", groups[i], groups[i]));
    tf_http_resp r;
    ae_req(&E, "POST", "/api/dead-letters/5-0/retry?group=choreo-audit", ADMIN, NULL, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    json_t *j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "group"), "choreo-audit");
    json_decref(j);
    tf_http_resp_free(&r);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS ".dlq.choreo-audit"), 0);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS ".dlq.choreo-order"), 1, "the other group's entry stays");
    expect_error("POST", "/api/dead-letters/5-0/retry?group=choreo-audit", ADMIN, NULL, 404, "not_found");
    expect_error("POST", "/api/dead-letters/5-0/retry?group=nope", ADMIN, NULL, 400, "invalid_request");
}
