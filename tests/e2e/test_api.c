/* test_api.c - chorus-api over real sockets against a real redis-server:
 * every route and every error of DESIGN.md ("HTTP API"), idempotency (replay,
 * conflict, concurrent requests with one key start one saga), 202 only once
 * the event is in Redis and 503 while Redis is down, and the long-poll that
 * wakes on the projection's notification (simulated here with HSET+PUBLISH:
 * no worker runs in these tests). */
#include <criterion/criterion.h>

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/e2e/api_env.h"
#include "tests/support/proc.h"

static api_env E;

static void setup(void)
{
    ae_setup(&E, NULL, AE_TOKEN, NULL);
    ae_product(&E, "p1", 1250, 100);
    ae_product(&E, "p2", 399, 5);
}

static void teardown(void)
{
    ae_teardown(&E);
}

TestSuite(api, .init = setup, .fini = teardown, .timeout = 120);

#define JSON_CT "Content-Type: application/json\r\n"
#define ADMIN JSON_CT "Authorization: Bearer " AE_TOKEN "\r\n"

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static long long jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    cr_assert(json_is_integer(v), "%s is not an integer", k);
    return (long long)json_integer_value(v);
}

/* ---- intake ------------------------------------------------------------- */

Test(api, checkout_202_means_the_event_is_in_the_bus_and_history)
{
    tf_http_resp r;
    ae_post_checkout(&E, "{\"client_id\":\"c-1\",\"items\":[{\"product_id\":\"p1\",\"quantity\":2},"
                         "{\"product_id\":\"p2\",\"quantity\":3}]}", NULL, &r);
    cr_assert_eq(r.status, 202, "%s", r.body);
    json_t *j = ae_json(&r);
    const char *id = jstr(j, "checkout_id");
    cr_assert_not_null(id);
    cr_assert_str_eq(jstr(j, "status"), "PENDING");
    char want[200], loc[200];
    snprintf(want, sizeof want, "/api/checkouts/%s", id);
    cr_assert_str_eq(jstr(json_object_get(j, "links"), "self"), want);
    cr_assert_not_null(tf_http_header(&r, "Location", loc, sizeof loc));
    cr_assert_str_eq(loc, want);
    snprintf(want, sizeof want, "/api/event-store/replay/checkout/%s", id);
    cr_assert_str_eq(jstr(json_object_get(j, "links"), "events"), want);

    /* in Redis already: the bus entry and the history element */
    cr_assert_eq(ae_int(&E, "LLEN chorus:h:checkout:%s", id), 1);
    redisReply *x = ae_cmd(&E, "XRANGE " AE_BUS " - +");
    cr_assert_eq(x->elements, 1);
    redisReply *f = x->element[0]->element[1];
    const char *payload = NULL;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        if (!strcmp(f->element[i]->str, "type"))
            cr_assert_str_eq(f->element[i + 1]->str, "CheckoutInitiated");
        if (!strcmp(f->element[i]->str, "payload"))
            payload = f->element[i + 1]->str;
    }
    cr_assert_not_null(payload);
    json_t *p = json_loads(payload, 0, NULL);
    cr_assert_str_eq(jstr(p, "aggregate"), "checkout");
    cr_assert_str_eq(jstr(p, "aggregate_id"), id);
    cr_assert_str_eq(jstr(p, "producer"), "api");
    cr_assert_eq(jint(p, "seq"), 1);
    json_t *d = json_object_get(p, "data");
    cr_assert_str_eq(jstr(d, "client_id"), "c-1");
    cr_assert_eq(jint(d, "total_cents"), 2 * 1250 + 3 * 399);
    json_t *it = json_array_get(json_object_get(d, "items"), 1);
    cr_assert_str_eq(jstr(it, "product_id"), "p2");
    cr_assert_eq(jint(it, "quantity"), 3);
    cr_assert_eq(jint(it, "unit_price_cents"), 399);
    json_decref(p);
    freeReplyObject(x);
    json_decref(j);
    tf_http_resp_free(&r);
}

Test(api, seed_alias_answers_the_same_plus_accepted_and_follow)
{
    tf_http_resp r;
    ae_req(&E, "POST", "/api/commandes/clients/client-7/checkout/choreo/", JSON_CT,
           "{\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", &r);
    cr_assert_eq(r.status, 202, "%s", r.body);
    json_t *j = ae_json(&r);
    const char *id = jstr(j, "checkout_id");
    cr_assert_not_null(id);
    cr_assert_str_eq(jstr(j, "status"), "PENDING");
    cr_assert(json_is_true(json_object_get(j, "accepted")));
    char want[200];
    snprintf(want, sizeof want, "/api/event-store/replay/checkout/%s", id);
    cr_assert_str_eq(jstr(j, "follow"), want);
    cr_assert_not_null(json_object_get(j, "links"));
    /* the client comes from the path */
    tf_http_resp g;
    snprintf(want, sizeof want, "/api/checkouts/%s", id);
    ae_req(&E, "GET", want, NULL, NULL, &g);
    json_t *s = ae_json(&g);
    cr_assert_str_eq(jstr(s, "client_id"), "client-7");
    json_decref(s);
    tf_http_resp_free(&g);
    json_decref(j);
    tf_http_resp_free(&r);
}

Test(api, malformed_json_is_400_invalid_json_and_writes_nothing)
{
    const char *bodies[] = {"", "{", "{\"client_id\":", "not json", "{\"a\":1}x", "[1,2", "{\"client_id\":\"a\",}",
                            "{\"client_id\":\"\xff\xfe\",\"items\":[]}", "{\"a\":1,\"a\":2}", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        tf_http_resp r;
        ae_post_checkout(&E, bodies[i], NULL, &r);
        ae_assert_error(&r, 400, "invalid_json");
        tf_http_resp_free(&r);
    }
    cr_assert_eq(ae_int(&E, "EXISTS " AE_BUS), 0);
}

Test(api, field_errors_are_400_invalid_request_naming_the_field)
{
    char long_id[80], many[8192];
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    size_t o = (size_t)snprintf(many, sizeof many, "{\"client_id\":\"c\",\"items\":[");
    for (int i = 0; i < 101; i++)
        o += (size_t)snprintf(many + o, sizeof many - o, "%s{\"product_id\":\"p1\",\"quantity\":1}", i ? "," : "");
    snprintf(many + o, sizeof many - o, "]}");
    char long_client[256];
    snprintf(long_client, sizeof long_client, "{\"client_id\":\"%s\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}",
             long_id);
    struct { const char *body, *field; } cases[] = {
        {"[]", "object"},
        {"{\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", "client_id"},
        {"{\"client_id\":7,\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", "client_id"},
        {"{\"client_id\":\"a b\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", "client_id"},
        {"{\"client_id\":\"\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", "client_id"},
        {long_client, "client_id"},
        {"{\"client_id\":\"c\"}", "items"},
        {"{\"client_id\":\"c\",\"items\":{}}", "items"},
        {"{\"client_id\":\"c\",\"items\":[]}", "items"},
        {many, "items"},
        {"{\"client_id\":\"c\",\"items\":[3]}", "items[0]"},
        {"{\"client_id\":\"c\",\"items\":[{\"quantity\":1}]}", "product_id"},
        {"{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p/1\",\"quantity\":1}]}", "product_id"},
        {"{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\"}]}", "quantity"},
        {"{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":0}]}", "quantity"},
        {"{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1001}]}", "quantity"},
        {"{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":-1}]}", "quantity"},
        {"{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1.5}]}", "quantity"},
        {"{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":\"2\"}]}", "quantity"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tf_http_resp r;
        ae_post_checkout(&E, cases[i].body, NULL, &r);
        ae_assert_error(&r, 400, "invalid_request");
        cr_assert(strstr(r.body, cases[i].field), "case %zu: message does not name %s: %s", i, cases[i].field,
                  r.body);
        tf_http_resp_free(&r);
    }
    cr_assert_eq(ae_int(&E, "EXISTS " AE_BUS), 0, "a rejected checkout wrote to the bus");
}

Test(api, lines_at_the_limits_are_accepted)
{
    char body[8192];
    size_t o = (size_t)snprintf(body, sizeof body, "{\"client_id\":\"c\",\"items\":[");
    for (int i = 0; i < 100; i++)
        o += (size_t)snprintf(body + o, sizeof body - o, "%s{\"product_id\":\"p1\",\"quantity\":%d}", i ? "," : "",
                              i == 0 ? 1000 : 1);
    snprintf(body + o, sizeof body - o, "]}");
    tf_http_resp r;
    ae_post_checkout(&E, body, NULL, &r);
    cr_assert_eq(r.status, 202, "%s", r.body);
    tf_http_resp_free(&r);
}

Test(api, unknown_product_is_422_and_writes_nothing)
{
    tf_http_resp r;
    ae_post_checkout(&E, "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1},"
                         "{\"product_id\":\"ghost\",\"quantity\":1}]}", "k-422", &r);
    ae_assert_error(&r, 422, "unknown_product");
    cr_assert(strstr(r.body, "ghost"));
    tf_http_resp_free(&r);
    cr_assert_eq(ae_int(&E, "EXISTS " AE_BUS), 0);
    cr_assert_eq(ae_int(&E, "EXISTS chorus:idem:c:k-422"), 0, "a refused request recorded its key");
}

Test(api, content_type_must_be_json_else_415)
{
    const char *body = "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}";
    const char *bad[] = {"Content-Type: text/plain\r\n", "", "Content-Type: application/jsonx\r\n",
                         "Content-Type: application/x-www-form-urlencoded\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tf_http_resp r;
        ae_req(&E, "POST", "/api/checkouts", bad[i], body, &r);
        ae_assert_error(&r, 415, "unsupported_media_type");
        tf_http_resp_free(&r);
    }
    tf_http_resp r;
    ae_req(&E, "POST", "/api/checkouts", "Content-Type: Application/JSON; charset=utf-8\r\n", body, &r);
    cr_assert_eq(r.status, 202, "parameters are allowed: %s", r.body);
    tf_http_resp_free(&r);
}

/* A valid checkout padded with spaces to exactly n bytes. */
static char *padded_body(size_t n)
{
    const char *core = "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]";
    char *b = malloc(n + 1);
    size_t cl = strlen(core);
    memcpy(b, core, cl);
    memset(b + cl, ' ', n - cl - 1);
    b[n - 1] = '}';
    b[n] = '\0';
    return b;
}

Test(api, body_over_64KiB_is_413_and_64KiB_exactly_is_accepted)
{
    char *ok = padded_body(65536), *big = padded_body(65537);
    tf_http_resp r;
    ae_post_checkout(&E, ok, NULL, &r);
    cr_assert_eq(r.status, 202, "%s", r.body);
    tf_http_resp_free(&r);
    ae_post_checkout(&E, big, NULL, &r);
    ae_assert_error(&r, 413, "payload_too_large");
    tf_http_resp_free(&r);

    /* announced too large: answered without sending the body */
    tf_http h;
    cr_assert_eq(tf_http_open(&h, E.port, 5000), 0);
    const char *head = "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       "Content-Length: 10000000\r\n\r\n";
    cr_assert_eq(tf_http_send_raw(&h, head, strlen(head), 5000), 0);
    cr_assert_eq(tf_http_read(&h, &r, false, 5000), 0, "no early 413");
    ae_assert_error(&r, 413, "payload_too_large");
    tf_http_resp_free(&r);
    tf_http_close(&h);

    /* chunked, growing past the cap */
    cr_assert_eq(tf_http_open(&h, E.port, 5000), 0);
    const char *chead = "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n";
    cr_assert_eq(tf_http_send_raw(&h, chead, strlen(chead), 5000), 0);
    char chunk[8192 + 16];
    int n = snprintf(chunk, sizeof chunk, "2000\r\n");
    memset(chunk + n, ' ', 8192);
    memcpy(chunk + n + 8192, "\r\n", 2);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(tf_http_send_raw(&h, chunk, (size_t)n + 8194, 5000), 0);
    cr_assert_eq(tf_http_send_raw(&h, "0\r\n\r\n", 5, 5000), 0);
    cr_assert_eq(tf_http_read(&h, &r, false, 5000), 0);
    ae_assert_error(&r, 413, "payload_too_large");
    tf_http_resp_free(&r);
    tf_http_close(&h);
    free(ok);
    free(big);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS), 1);
}

Test(api, errors_keep_the_connection_usable)
{
    tf_http h;
    cr_assert_eq(tf_http_open(&h, E.port, 5000), 0);
    const char *good = "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}";
    const char *bad = "{\"client_id\":";
    tf_http_resp r;
    cr_assert_eq(tf_http_do(&h, "POST", "/api/checkouts", JSON_CT, bad, strlen(bad), &r, 5000), 0);
    ae_assert_error(&r, 400, "invalid_json");
    tf_http_resp_free(&r);
    cr_assert_eq(tf_http_do(&h, "POST", "/api/checkouts", "Content-Type: text/plain\r\n", good, strlen(good), &r,
                            5000), 0);
    ae_assert_error(&r, 415, "unsupported_media_type");
    tf_http_resp_free(&r);
    cr_assert_eq(tf_http_do(&h, "GET", "/nope", NULL, NULL, 0, &r, 5000), 0);
    ae_assert_error(&r, 404, "not_found");
    tf_http_resp_free(&r);
    cr_assert_eq(tf_http_do(&h, "DELETE", "/api/checkouts", NULL, NULL, 0, &r, 5000), 0);
    ae_assert_error(&r, 405, "method_not_allowed");
    tf_http_resp_free(&r);
    cr_assert_eq(tf_http_do(&h, "POST", "/api/checkouts", JSON_CT, good, strlen(good), &r, 5000), 0);
    cr_assert_eq(r.status, 202, "the same connection still serves: %s", r.body);
    tf_http_resp_free(&r);
    tf_http_close(&h);
}

/* ---- idempotency ---------------------------------------------------------- */

Test(api, same_key_same_body_replays_the_same_202_and_starts_nothing)
{
    tf_http_resp a, b;
    ae_post_checkout(&E, "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":2}]}", "key-1", &a);
    cr_assert_eq(a.status, 202, "%s", a.body);
    /* the same JSON after parsing: other key order, other spacing */
    ae_post_checkout(&E, " { \"items\" : [ {\"quantity\":2, \"product_id\":\"p1\"} ], \"client_id\":\"c\" } ", "key-1",
                     &b);
    cr_assert_eq(b.status, 202, "%s", b.body);
    json_t *ja = ae_json(&a), *jb = ae_json(&b);
    cr_assert_str_eq(jstr(ja, "checkout_id"), jstr(jb, "checkout_id"));
    char la[200], lb[200];
    cr_assert_not_null(tf_http_header(&b, "Location", lb, sizeof lb));
    cr_assert_not_null(tf_http_header(&a, "Location", la, sizeof la));
    cr_assert_str_eq(la, lb);
    cr_assert_str_eq(a.body, b.body, "the replay answers the same body");
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS), 1, "a replay appended a second event");
    long long ttl = ae_int(&E, "TTL chorus:idem:c:key-1");
    cr_assert(ttl > 86000 && ttl <= 86400, "the record is kept 24 h (ttl %lld)", ttl);
    json_decref(ja);
    json_decref(jb);
    tf_http_resp_free(&a);
    tf_http_resp_free(&b);
}

Test(api, the_seed_route_replays_its_own_202_body_from_a_compact_record)
{
    tf_http_resp a, b;
    const char *body = "{\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}";
    const char *hdr = JSON_CT "Idempotency-Key: seed-1\r\n";
    ae_req(&E, "POST", "/api/commandes/clients/c/checkout/choreo/", hdr, body, &a);
    ae_req(&E, "POST", "/api/commandes/clients/c/checkout/choreo/", hdr, body, &b);
    cr_assert_eq(a.status, 202, "%s", a.body);
    cr_assert_eq(b.status, 202, "%s", b.body);
    cr_assert_str_eq(a.body, b.body);
    cr_assert(strstr(b.body, "\"accepted\":true") && strstr(b.body, "\"follow\""), "%s", b.body);
    /* the record keeps the route's letter, not the body */
    redisReply *r = ae_cmd(&E, "GET chorus:idem:c:seed-1");
    cr_assert(r->type == REDIS_REPLY_STRING && r->len < 120 && r->str[r->len - 1] == 'a', "record %s", r->str);
    freeReplyObject(r);
    tf_http_resp_free(&a);
    tf_http_resp_free(&b);
}

Test(api, same_key_other_body_is_409_idempotency_conflict)
{
    tf_http_resp a, b;
    ae_post_checkout(&E, "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":2}]}", "key-2", &a);
    cr_assert_eq(a.status, 202);
    ae_post_checkout(&E, "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":3}]}", "key-2", &b);
    ae_assert_error(&b, 409, "idempotency_conflict");
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS), 1);
    tf_http_resp_free(&a);
    tf_http_resp_free(&b);
}

/* The CheckoutInitiated of checkout id as stored in its history. */
static char *initiated(const char *id)
{
    redisReply *r = ae_cmd(&E, "LINDEX chorus:h:checkout:%s 0", id);
    cr_assert_eq(r->type, REDIS_REPLY_STRING, "no history for %s", id);
    char *s = strdup(r->str);
    freeReplyObject(r);
    return s;
}

Test(api, the_event_carries_the_catalog_price_even_after_it_changed)
{
    /* the API prices events from a cache the script checks: a price changed
     * behind its back (another API, redis-cli) is what the event carries */
    char a[80], b[80];
    ae_checkout(&E, "c", "p1", 2, a);
    char *ev = initiated(a);
    cr_expect(strstr(ev, "\"unit_price_cents\":1250") && strstr(ev, "\"total_cents\":2500"), "%s", ev);
    free(ev);
    freeReplyObject(ae_cmd(&E, "HSET chorus:product:p1 price_cents 999"));
    ae_checkout(&E, "c", "p1", 3, b);
    ev = initiated(b);
    cr_expect(strstr(ev, "\"unit_price_cents\":999") && strstr(ev, "\"total_cents\":2997"), "%s", ev);
    cr_expect(strstr(ev, "\"seq\":1"), "%s", ev);
    free(ev);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS), 2, "a checkout after a price change is appended once");
    /* a price stored in a non-canonical form is the same number */
    char c3[80];
    freeReplyObject(ae_cmd(&E, "HSET chorus:product:p1 price_cents 0999"));
    ae_checkout(&E, "c", "p1", 1, c3);
    ev = initiated(c3);
    cr_expect(strstr(ev, "\"unit_price_cents\":999"), "%s", ev);
    free(ev);
}

Test(api, one_key_used_by_two_clients_starts_two_sagas)
{
    /* keys are scoped to the client: another client's "1" is unrelated */
    tf_http_resp a, b, c;
    ae_post_checkout(&E, "{\"client_id\":\"alice\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", "1", &a);
    ae_post_checkout(&E, "{\"client_id\":\"bob\",\"items\":[{\"product_id\":\"p1\",\"quantity\":2}]}", "1", &b);
    cr_assert_eq(a.status, 202, "%s", a.body);
    cr_assert_eq(b.status, 202, "the second client got %d: %s", b.status, b.body);
    json_t *ja = ae_json(&a), *jb = ae_json(&b);
    cr_assert_str_neq(jstr(ja, "checkout_id"), jstr(jb, "checkout_id"));
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS), 2, "each client started its own saga");
    /* and each client's own key still replays */
    ae_post_checkout(&E, "{\"client_id\":\"bob\",\"items\":[{\"product_id\":\"p1\",\"quantity\":2}]}", "1", &c);
    cr_assert_eq(c.status, 202);
    json_t *jc = ae_json(&c);
    cr_assert_str_eq(jstr(jb, "checkout_id"), jstr(jc, "checkout_id"));
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS), 2);
    json_decref(ja);
    json_decref(jb);
    json_decref(jc);
    tf_http_resp_free(&a);
    tf_http_resp_free(&b);
    tf_http_resp_free(&c);
}

Test(api, malformed_idempotency_key_is_400)
{
    char k129[140];
    memset(k129, 'k', 129);
    k129[129] = '\0';
    const char *keys[] = {k129, "caf\xc3\xa9", "tab\there"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        tf_http_resp r;
        ae_post_checkout(&E, "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", keys[i], &r);
        ae_assert_error(&r, 400, "invalid_request");
        cr_assert(strstr(r.body, "Idempotency-Key"));
        tf_http_resp_free(&r);
    }
    char k128[140];
    memset(k128, 'k', 128);
    k128[128] = '\0';
    tf_http_resp r;
    ae_post_checkout(&E, "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", k128, &r);
    cr_assert_eq(r.status, 202, "128 characters is allowed: %s", r.body);
    tf_http_resp_free(&r);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS), 1);
}

typedef struct racer {
    int port;
    int status;
    char id[80];
} racer;

static void *race(void *ud)
{
    racer *x = ud;
    tf_http_resp r;
    if (tf_http_request(x->port, "POST", "/api/checkouts", JSON_CT "Idempotency-Key: one-key\r\n",
                        "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", &r) == 0) {
        x->status = r.status;
        json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
        snprintf(x->id, sizeof x->id, "%s", j && jstr(j, "checkout_id") ? jstr(j, "checkout_id") : "");
        json_decref(j);
    }
    tf_http_resp_free(&r);
    return NULL;
}

Test(api, concurrent_requests_with_one_key_start_one_saga)
{
    enum { N = 16 };
    for (int round = 0; round < 3; round++) {
        freeReplyObject(ae_cmd(&E, "FLUSHALL"));
        ae_product(&E, "p1", 1250, 100);
        pthread_t t[N];
        racer x[N];
        for (int i = 0; i < N; i++) {
            x[i] = (racer){.port = E.port};
            pthread_create(&t[i], NULL, race, &x[i]);
        }
        for (int i = 0; i < N; i++)
            pthread_join(t[i], NULL);
        for (int i = 0; i < N; i++) {
            cr_assert_eq(x[i].status, 202, "racer %d got %d", i, x[i].status);
            cr_assert_str_eq(x[i].id, x[0].id, "two checkout ids for one key");
        }
        cr_assert_eq(ae_int(&E, "XLEN " AE_BUS), 1, "one key started %lld sagas", ae_int(&E, "XLEN " AE_BUS));
    }
}

typedef struct hammer {
    int port;
    int accepted;
    char ids[400][40];
} hammer;

/* Posts checkouts until the server stops answering; keeps every 202's id. */
static void *hammer_run(void *ud)
{
    hammer *x = ud;
    tf_http h;
    if (tf_http_open(&h, x->port, 5000) != 0)
        return NULL;
    const char *body = "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}";
    while (x->accepted < 400) {
        tf_http_resp r;
        if (tf_http_do(&h, "POST", "/api/checkouts", JSON_CT, body, strlen(body), &r, 10000) != 0) {
            tf_http_resp_free(&r);
            break;
        }
        json_t *j = r.status == 202 ? json_loadb(r.body, r.body_len, 0, NULL) : NULL;
        if (j && jstr(j, "checkout_id"))
            snprintf(x->ids[x->accepted++], sizeof x->ids[0], "%s", jstr(j, "checkout_id"));
        json_decref(j);
        bool closed = r.closed;
        tf_http_resp_free(&r);
        if (closed)
            break;
    }
    tf_http_close(&h);
    return NULL;
}

static bool some_accepted(void *ud)
{
    (void)ud;
    return ae_int(&E, "XLEN " AE_BUS) >= 50;
}

Test(api, sigterm_under_intake_load_exits_clean_and_every_202_is_in_redis)
{
    enum { N = 8 };
    pthread_t t[N];
    static hammer x[N];
    for (int i = 0; i < N; i++) {
        x[i] = (hammer){.port = E.port};
        pthread_create(&t[i], NULL, hammer_run, &x[i]);
    }
    cr_assert(tf_wait_until(some_accepted, NULL, 10000));
    ae_stop_api(&E);   /* SIGTERM mid-load; asserts exit 0 and a clean log */
    int total = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        for (int k = 0; k < x[i].accepted; k++)
            cr_assert_eq(ae_int(&E, "LLEN chorus:h:checkout:%s", x[i].ids[k]), 1, "a 202 that is not in Redis");
        total += x[i].accepted;
    }
    cr_assert_geq(total, 50);
    cr_assert_geq(ae_int(&E, "XLEN " AE_BUS), total);
}

/* ---- Redis down ------------------------------------------------------------ */

static bool checkout_accepted(void *ud)
{
    api_env *e = ud;
    tf_http_resp r;
    bool ok = tf_http_request(e->port, "POST", "/api/checkouts", JSON_CT,
                              "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", &r) == 0 &&
              r.status == 202;
    tf_http_resp_free(&r);
    return ok;
}

TestSuite(api_redis, .timeout = 120);

Test(api_redis, redis_down_is_503_retryable_and_service_resumes_after_restart)
{
    ae_setup(&E, "appendonly yes\nappendfsync always\n", AE_TOKEN, NULL);
    ae_product(&E, "p1", 1250, 100);
    char before[80];
    ae_checkout(&E, "c", "p1", 1, before);

    cr_assert_eq(tf_redis_kill9(&E.r), 0);
    for (int i = 0; i < 3; i++) {   /* every thread's connection notices */
        tf_http_resp r;
        ae_post_checkout(&E, "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", "retry-me", &r);
        ae_assert_error(&r, 503, "unavailable");
        json_t *j = ae_json(&r);
        cr_assert(json_is_true(json_object_get(json_object_get(j, "error"), "retryable")), "%s", r.body);
        json_decref(j);
        char ra[16];
        cr_assert_not_null(tf_http_header(&r, "Retry-After", ra, sizeof ra));
        tf_http_resp_free(&r);
    }
    tf_http_resp r;
    ae_req(&E, "GET", "/ready", NULL, NULL, &r);
    cr_assert_eq(r.status, 503);
    tf_http_resp_free(&r);
    ae_req(&E, "GET", "/health", NULL, NULL, &r);
    cr_assert_eq(r.status, 200, "liveness does not depend on Redis");
    tf_http_resp_free(&r);

    cr_assert_eq(tf_redis_restart(&E.r), 0);
    redisFree(E.c);
    E.c = tf_redis_connect(&E.r);
    cr_assert(tf_wait_until(checkout_accepted, &E, 10000), "the API did not recover after Redis came back");
    /* the retried key now starts its saga once */
    ae_post_checkout(&E, "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", "retry-me", &r);
    cr_assert_eq(r.status, 202);
    tf_http_resp_free(&r);
    ae_post_checkout(&E, "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", "retry-me", &r);
    cr_assert_eq(r.status, 202);
    tf_http_resp_free(&r);
    /* what was answered 202 before the crash survived it (fsync always) */
    cr_assert_eq(ae_int(&E, "LLEN chorus:h:checkout:%s", before), 1);
    long long n = ae_int(&E, "XLEN " AE_BUS);
    cr_assert(n >= 3, "expected the pre-crash, a recovery and the retried checkout, got %lld", n);
    ae_teardown(&E);
}

/* ---- checkout status and long-poll ----------------------------------------- */

static void set_rm(const char *id, const char *status, const char *k, const char *v)
{
    freeReplyObject(ae_cmd(&E, "HSET chorus:rm:checkout:%s checkout_id %s client_id c status %s updated_at 1700000000.5 seq 3",
                           id, id, status));
    if (k)
        freeReplyObject(ae_cmd(&E, "HSET chorus:rm:checkout:%s %s %s", id, k, v));
}

static void publish(const char *id)
{
    freeReplyObject(ae_cmd(&E, "PUBLISH chorus:rm:checkout-changed %s", id));
}

Test(api, status_comes_from_the_read_model_or_the_history_never_404_for_an_accepted_checkout)
{
    char id[80], path[160];
    ae_checkout(&E, "c-9", "p1", 1, id);
    snprintf(path, sizeof path, "/api/checkouts/%s", id);
    tf_http_resp r;
    ae_req(&E, "GET", path, NULL, NULL, &r);   /* no read model yet */
    cr_assert_eq(r.status, 200, "%s", r.body);
    json_t *j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "checkout_id"), id);
    cr_assert_str_eq(jstr(j, "client_id"), "c-9");
    cr_assert_str_eq(jstr(j, "status"), "PENDING");
    cr_assert(json_is_number(json_object_get(j, "updated_at")));
    cr_assert_null(json_object_get(j, "order_id"));
    json_decref(j);
    tf_http_resp_free(&r);

    set_rm(id, "SUCCEEDED", "order_id", "o-42");
    ae_req(&E, "GET", path, NULL, NULL, &r);
    j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "status"), "SUCCEEDED");
    cr_assert_str_eq(jstr(j, "order_id"), "o-42");
    cr_assert_eq(json_real_value(json_object_get(j, "updated_at")), 1700000000.5);
    json_decref(j);
    tf_http_resp_free(&r);

    freeReplyObject(ae_cmd(&E, "HDEL chorus:rm:checkout:%s order_id", id));
    set_rm(id, "FAILED", "reason", "insufficient_stock");
    ae_req(&E, "GET", path, NULL, NULL, &r);
    j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "status"), "FAILED");
    cr_assert_str_eq(jstr(j, "reason"), "insufficient_stock");
    json_decref(j);
    tf_http_resp_free(&r);

    ae_req(&E, "GET", "/api/checkouts/01890000-0000-7000-8000-000000000000", NULL, NULL, &r);
    ae_assert_error(&r, 404, "not_found");
    tf_http_resp_free(&r);
    ae_req(&E, "GET", "/api/checkouts/bad%20id", NULL, NULL, &r);
    ae_assert_error(&r, 404, "not_found");
    tf_http_resp_free(&r);
}

Test(api, wait_ms_outside_0_to_30000_is_400)
{
    char id[80], path[200];
    ae_checkout(&E, "c", "p1", 1, id);
    const char *bad[] = {"-1", "30001", "abc", "1.5", "", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(path, sizeof path, "/api/checkouts/%s?wait_ms=%s", id, bad[i]);
        tf_http_resp r;
        ae_req(&E, "GET", path, NULL, NULL, &r);
        ae_assert_error(&r, 400, "invalid_request");
        cr_assert(strstr(r.body, "wait_ms"));
        tf_http_resp_free(&r);
    }
}

/* The API's count of suspended long-polls, from /metrics. */
static long long polls_waiting(void)
{
    tf_http_resp r;
    ae_req(&E, "GET", "/metrics", NULL, NULL, &r);
    const char *m = strstr(r.body, "\nhttp_long_polls_waiting ");
    long long n = m ? atoll(m + strlen("\nhttp_long_polls_waiting ")) : -1;
    tf_http_resp_free(&r);
    return n;
}

static long long g_want_waiting;

static bool polls_waiting_reached(void *ud)
{
    (void)ud;
    return polls_waiting() == g_want_waiting;
}

static void wait_polls(long long n)
{
    g_want_waiting = n;
    cr_assert(tf_wait_until(polls_waiting_reached, NULL, 10000), "expected %lld suspended long-polls, have %lld", n,
              polls_waiting());
}

/* True if h has bytes to read within ms. */
static bool readable_within(tf_http *h, int ms)
{
    struct pollfd p = {.fd = h->fd, .events = POLLIN};
    return poll(&p, 1, ms) > 0;
}

Test(api, long_poll_wakes_promptly_on_the_projection_notice_and_only_for_terminal)
{
    char id[80], req[300];
    ae_checkout(&E, "c", "p1", 1, id);
    tf_http h;
    cr_assert_eq(tf_http_open(&h, E.port, 5000), 0);
    snprintf(req, sizeof req, "GET /api/checkouts/%s?wait_ms=20000 HTTP/1.1\r\nHost: x\r\n\r\n", id);
    cr_assert_eq(tf_http_send_raw(&h, req, strlen(req), 5000), 0);
    wait_polls(1);
    cr_assert(!readable_within(&h, 0), "a PENDING checkout was answered instead of waiting");

    /* an intermediate status does not end the wait */
    set_rm(id, "STOCK_RESERVED", NULL, NULL);
    publish(id);
    cr_assert(!readable_within(&h, 300), "STOCK_RESERVED ended the long-poll");
    wait_polls(1);

    set_rm(id, "SUCCEEDED", "order_id", "o-1");
    long long t0 = tf_now_ms();
    publish(id);
    tf_http_resp r;
    cr_assert_eq(tf_http_read(&h, &r, false, 5000), 0);
    long long took = tf_now_ms() - t0;
    cr_assert_eq(r.status, 200);
    json_t *j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "status"), "SUCCEEDED");
    cr_assert(took < 500, "woke %lld ms after the notice", took);
    json_decref(j);
    tf_http_resp_free(&r);
    tf_http_close(&h);
}

Test(api, long_poll_times_out_with_the_current_status)
{
    char id[80], path[200];
    ae_checkout(&E, "c", "p1", 1, id);
    snprintf(path, sizeof path, "/api/checkouts/%s?wait_ms=700", id);
    long long t0 = tf_now_ms();
    tf_http_resp r;
    ae_req(&E, "GET", path, NULL, NULL, &r);
    long long took = tf_now_ms() - t0;
    cr_assert_eq(r.status, 200);
    json_t *j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "status"), "PENDING");
    cr_assert(took >= 650 && took < 3000, "answered after %lld ms for wait_ms=700", took);
    json_decref(j);
    tf_http_resp_free(&r);

    /* already terminal: answered at once */
    set_rm(id, "FAILED", "reason", "timed_out");
    snprintf(path, sizeof path, "/api/checkouts/%s?wait_ms=30000", id);
    t0 = tf_now_ms();
    ae_req(&E, "GET", path, NULL, NULL, &r);
    cr_assert(tf_now_ms() - t0 < 1000);
    j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "status"), "FAILED");
    json_decref(j);
    tf_http_resp_free(&r);
}

typedef struct poller {
    int port;
    char path[200];
    int status;
    char st[32];
} poller;

static void *poll_one(void *ud)
{
    poller *p = ud;
    tf_http_resp r;
    if (tf_http_request(p->port, "GET", p->path, NULL, NULL, &r) == 0) {
        p->status = r.status;
        json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
        snprintf(p->st, sizeof p->st, "%s", j && jstr(j, "status") ? jstr(j, "status") : "");
        json_decref(j);
    }
    tf_http_resp_free(&r);
    return NULL;
}

Test(api, many_long_polls_hold_no_thread_and_each_wakes_for_its_checkout)
{
    enum { N = 40 };
    char ids[N][80];
    pthread_t t[N];
    poller p[N];
    for (int i = 0; i < N; i++) {
        ae_checkout(&E, "c", "p1", 1, ids[i]);
        p[i] = (poller){.port = E.port};
        snprintf(p[i].path, sizeof p[i].path, "/api/checkouts/%s?wait_ms=15000", ids[i]);
        pthread_create(&t[i], NULL, poll_one, &p[i]);
    }
    /* 40 waiting polls on 2 threads: other requests are still served */
    tf_http_resp r;
    long long t0 = tf_now_ms();
    ae_req(&E, "GET", "/health", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert(tf_now_ms() - t0 < 1000);
    tf_http_resp_free(&r);
    wait_polls(N);   /* every poll reached the server and is suspended */
    for (int i = 0; i < N; i++) {
        set_rm(ids[i], i % 2 ? "SUCCEEDED" : "FAILED", NULL, NULL);
        publish(ids[i]);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(p[i].status, 200);
        cr_assert_str_eq(p[i].st, i % 2 ? "SUCCEEDED" : "FAILED");
    }
    cr_assert_eq(polls_waiting(), 0);
}

/* ---- event store routes ---------------------------------------------------- */

Test(api, stream_pages_walk_the_bus_with_after_and_next)
{
    for (int i = 0; i < 5; i++) {
        char id[80];
        ae_checkout(&E, "c", "p1", 1, id);
    }
    char path[300], after[64] = "";
    int seen = 0, pages = 0;
    for (;;) {
        snprintf(path, sizeof path, "/api/event-store/streams/" AE_BUS "/events?count=2%s%s", after[0] ? "&after=" : "",
                 after);
        tf_http_resp r;
        ae_req(&E, "GET", path, NULL, NULL, &r);
        cr_assert_eq(r.status, 200, "%s", r.body);
        json_t *j = ae_json(&r);
        cr_assert_str_eq(jstr(j, "stream"), AE_BUS);
        json_t *evs = json_object_get(j, "events");
        for (size_t i = 0; i < json_array_size(evs); i++) {
            json_t *ev = json_array_get(evs, i);
            cr_assert(json_is_string(json_object_get(ev, "id")));
            cr_assert_str_eq(jstr(ev, "type"), "CheckoutInitiated");
            cr_assert(json_is_object(json_object_get(ev, "payload")));
            cr_assert(json_is_number(json_object_get(ev, "ts")));
            seen++;
        }
        pages++;
        json_t *next = json_object_get(j, "next");
        if (json_is_null(next)) {
            json_decref(j);
            tf_http_resp_free(&r);
            break;
        }
        cr_assert_eq(json_array_size(evs), 2);
        snprintf(after, sizeof after, "%s", json_string_value(next));
        json_decref(j);
        tf_http_resp_free(&r);
        cr_assert(pages < 10);
    }
    cr_assert_eq(seen, 5);
    cr_assert_eq(pages, 3);

    tf_http_resp r;   /* default count, and a dead-letter stream is readable */
    ae_req(&E, "GET", "/api/event-store/streams/" AE_BUS "/events", NULL, NULL, &r);
    json_t *j = ae_json(&r);
    cr_assert_eq(json_array_size(json_object_get(j, "events")), 5);
    cr_assert(json_is_null(json_object_get(j, "next")));
    json_decref(j);
    tf_http_resp_free(&r);
    ae_req(&E, "GET", "/api/event-store/streams/" AE_BUS ".dlq.choreo-audit/events", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    tf_http_resp_free(&r);
}

Test(api, stream_route_refuses_other_keys_and_bad_paging)
{
    freeReplyObject(ae_cmd(&E, "SET chorus:secret x"));
    const char *unknown[] = {"chorus:secret", "chorus:products", AE_BUS ".retry.choreo-audit", "x"};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        char path[300];
        snprintf(path, sizeof path, "/api/event-store/streams/%s/events", unknown[i]);
        tf_http_resp r;
        ae_req(&E, "GET", path, NULL, NULL, &r);
        ae_assert_error(&r, 404, "unknown_stream");
        tf_http_resp_free(&r);
    }
    const char *bad[] = {"count=0", "count=1001", "count=abc", "count=-5", "after=abc", "after=1-2-3", "after=-1",
                         "after=99999999999999999999999-0"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[300];
        snprintf(path, sizeof path, "/api/event-store/streams/" AE_BUS "/events?%s", bad[i]);
        tf_http_resp r;
        ae_req(&E, "GET", path, NULL, NULL, &r);
        ae_assert_error(&r, 400, "invalid_request");
        tf_http_resp_free(&r);
    }
    const char *good[] = {"count=1", "count=1000", "after=0", "after=0-0", "after=1700000000000",
                          "after=18446744073709551615-18446744073709551615"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char path[300];
        snprintf(path, sizeof path, "/api/event-store/streams/" AE_BUS "/events?%s", good[i]);
        tf_http_resp r;
        ae_req(&E, "GET", path, NULL, NULL, &r);
        cr_assert_eq(r.status, 200, "%s: %s", good[i], r.body);
        tf_http_resp_free(&r);
    }
}

Test(api, replay_returns_events_in_seq_order_and_the_folded_state)
{
    char id[80], path[200];
    ae_checkout(&E, "c-r", "p2", 2, id);
    snprintf(path, sizeof path, "/api/event-store/replay/checkout/%s", id);
    tf_http_resp r;
    ae_req(&E, "GET", path, NULL, NULL, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    json_t *j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "checkout_id"), id);
    json_t *evs = json_object_get(j, "events");
    cr_assert_eq(json_array_size(evs), 1);
    json_t *p = json_object_get(json_array_get(evs, 0), "payload");
    cr_assert_eq(jint(p, "seq"), 1);
    json_t *st = json_object_get(j, "state");
    cr_assert_str_eq(jstr(st, "status"), "PENDING");
    cr_assert_str_eq(jstr(st, "client_id"), "c-r");
    cr_assert_eq(jint(st, "total_cents"), 2 * 399);
    json_decref(j);
    tf_http_resp_free(&r);

    ae_req(&E, "GET", "/api/event-store/replay/checkout/no-such-checkout", NULL, NULL, &r);
    ae_assert_error(&r, 404, "not_found");
    tf_http_resp_free(&r);
}

Test(api, orders_by_client_reads_the_read_model_with_zeros_for_none)
{
    tf_http_resp r;
    ae_req(&E, "GET", "/api/event-store/cqrs/orders-by-client/nobody", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    json_t *j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "client_id"), "nobody");
    cr_assert_eq(jint(j, "total_orders"), 0);
    cr_assert(json_is_null(json_object_get(j, "last_order_id")));
    cr_assert(json_is_null(json_object_get(j, "last_checkout_id")));
    cr_assert(json_is_null(json_object_get(j, "last_update_ts")));
    json_decref(j);
    tf_http_resp_free(&r);

    freeReplyObject(ae_cmd(&E, "HSET chorus:rm:client:alice total_orders 3 last_order_id o-3 last_checkout_id ck-3 "
                               "last_update_ts 1700000001.25"));
    ae_req(&E, "GET", "/api/event-store/cqrs/orders-by-client/alice", NULL, NULL, &r);
    j = ae_json(&r);
    cr_assert_eq(jint(j, "total_orders"), 3);
    cr_assert_str_eq(jstr(j, "last_order_id"), "o-3");
    cr_assert_str_eq(jstr(j, "last_checkout_id"), "ck-3");
    cr_assert_eq(json_real_value(json_object_get(j, "last_update_ts")), 1700000001.25);
    json_decref(j);
    tf_http_resp_free(&r);

    ae_req(&E, "GET", "/api/event-store/cqrs/orders-by-client/bad%20id", NULL, NULL, &r);
    ae_assert_error(&r, 400, "invalid_request");
    tf_http_resp_free(&r);
}

/* ---- catalog --------------------------------------------------------------- */

Test(api, products_list_and_one_and_unknown_is_404)
{
    tf_http_resp r;
    ae_req(&E, "GET", "/api/products", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    json_t *j = ae_json(&r);
    json_t *ps = json_object_get(j, "products");
    cr_assert_eq(json_array_size(ps), 2);
    json_t *p1 = json_array_get(ps, 0);
    cr_assert_str_eq(jstr(p1, "product_id"), "p1");
    cr_assert_eq(jint(p1, "price_cents"), 1250);
    cr_assert_eq(jint(p1, "available"), 100);
    cr_assert_eq(jint(p1, "reserved"), 0);
    cr_assert_eq(jint(p1, "sold"), 0);
    cr_assert_str_eq(jstr(p1, "name"), "p1");
    json_decref(j);
    tf_http_resp_free(&r);

    ae_req(&E, "GET", "/api/products/p2", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "product_id"), "p2");
    cr_assert_eq(jint(j, "price_cents"), 399);
    json_decref(j);
    tf_http_resp_free(&r);

    ae_req(&E, "GET", "/api/products/ghost", NULL, NULL, &r);
    ae_assert_error(&r, 404, "unknown_product");
    tf_http_resp_free(&r);
}

Test(api, product_put_sets_name_price_stock_and_keeps_reserved_and_sold)
{
    freeReplyObject(ae_cmd(&E, "HSET chorus:product:p1 reserved 7 sold 4"));
    tf_http_resp r;
    ae_req(&E, "PUT", "/api/products/p1", ADMIN, "{\"name\":\"Widget\",\"price_cents\":999,\"available\":50}", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    json_t *j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "product_id"), "p1");
    cr_assert_str_eq(jstr(j, "name"), "Widget");
    cr_assert_eq(jint(j, "price_cents"), 999);
    cr_assert_eq(jint(j, "available"), 50);
    cr_assert_eq(jint(j, "reserved"), 7);
    cr_assert_eq(jint(j, "sold"), 4);
    json_decref(j);
    tf_http_resp_free(&r);

    ae_req(&E, "PUT", "/api/products/new-1", ADMIN, "{\"name\":\"New\",\"price_cents\":100,\"available\":3}", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    j = ae_json(&r);
    cr_assert_eq(jint(j, "reserved"), 0);
    cr_assert_eq(jint(j, "sold"), 0);
    json_decref(j);
    tf_http_resp_free(&r);
    cr_assert_eq(ae_int(&E, "SISMEMBER chorus:products new-1"), 1);
    /* the new price is used by the intake at once */
    ae_post_checkout(&E, "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"new-1\",\"quantity\":2}]}", NULL, &r);
    cr_assert_eq(r.status, 202);
    tf_http_resp_free(&r);
    redisReply *x = ae_cmd(&E, "XRANGE " AE_BUS " - +");
    cr_assert(strstr(x->element[0]->element[1]->element[3]->str, "\"total_cents\":200"));
    freeReplyObject(x);
}

Test(api, product_put_validates_its_body)
{
    const char *bad[] = {"{\"price_cents\":1,\"available\":1}", "{\"name\":\"\",\"price_cents\":1,\"available\":1}",
                         "{\"name\":\"x\",\"price_cents\":-1,\"available\":1}", "{\"name\":\"x\",\"price_cents\":1}",
                         "{\"name\":\"x\",\"price_cents\":1,\"available\":1.5}", "[]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tf_http_resp r;
        ae_req(&E, "PUT", "/api/products/p9", ADMIN, bad[i], &r);
        ae_assert_error(&r, 400, "invalid_request");
        tf_http_resp_free(&r);
    }
    tf_http_resp r;
    ae_req(&E, "PUT", "/api/products/p9", ADMIN, "{\"name\":", &r);
    ae_assert_error(&r, 400, "invalid_json");
    tf_http_resp_free(&r);
    ae_req(&E, "PUT", "/api/products/p9", "Authorization: Bearer " AE_TOKEN "\r\nContent-Type: text/plain\r\n",
           "{\"name\":\"x\",\"price_cents\":1,\"available\":1}", &r);
    ae_assert_error(&r, 415, "unsupported_media_type");
    tf_http_resp_free(&r);
    ae_req(&E, "PUT", "/api/products/bad%20id", ADMIN, "{\"name\":\"x\",\"price_cents\":1,\"available\":1}", &r);
    ae_assert_error(&r, 400, "invalid_request");
    tf_http_resp_free(&r);
    cr_assert_eq(ae_int(&E, "EXISTS chorus:product:p9"), 0);
}

Test(api, admin_routes_need_the_bearer_token)
{
    const char *body = "{\"name\":\"x\",\"price_cents\":1,\"available\":1}";
    const char *heads[] = {JSON_CT, JSON_CT "Authorization: Bearer wrong\r\n",
                           JSON_CT "Authorization: Bearer " AE_TOKEN "x\r\n", JSON_CT "Authorization: Basic abc\r\n",
                           JSON_CT "Authorization: Bearer \r\n"};
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        tf_http_resp r;
        ae_req(&E, "PUT", "/api/products/p1", heads[i], body, &r);
        ae_assert_error(&r, 401, "unauthorized");
        tf_http_resp_free(&r);
        ae_req(&E, "POST", "/api/dead-letters/1-0/retry", heads[i], NULL, &r);
        ae_assert_error(&r, 401, "unauthorized");
        tf_http_resp_free(&r);
    }
    redisReply *p = ae_cmd(&E, "HGET chorus:product:p1 price_cents");
    cr_assert_str_eq(p->str, "1250", "a refused upsert changed the product");
    freeReplyObject(p);
}

TestSuite(api_noadmin, .timeout = 120);

Test(api_noadmin, admin_routes_are_403_when_no_token_is_configured)
{
    ae_setup(&E, NULL, NULL, NULL);
    tf_http_resp r;
    ae_req(&E, "PUT", "/api/products/p1", ADMIN, "{\"name\":\"x\",\"price_cents\":1,\"available\":1}", &r);
    ae_assert_error(&r, 403, "admin_disabled");
    tf_http_resp_free(&r);
    ae_req(&E, "POST", "/api/dead-letters/1-0/retry", "Authorization: Bearer \r\n", NULL, &r);
    ae_assert_error(&r, 403, "admin_disabled");
    tf_http_resp_free(&r);
    cr_assert_eq(ae_int(&E, "EXISTS chorus:product:p1"), 0);
    ae_teardown(&E);
}

/* ---- operations -------------------------------------------------------------- */

static void create_groups(void)
{
    static const char *groups[] = {"choreo-reservation", "choreo-order", "choreo-compensation",
                                   "choreo-notification", "choreo-audit", "choreo-cqrs"};
    for (int i = 0; i < 6; i++)
        freeReplyObject(ae_cmd(&E, "XGROUP CREATE " AE_BUS " %s 0 MKSTREAM", groups[i]));
}

Test(api, workers_lists_the_groups_from_xinfo)
{
    tf_http_resp r;
    ae_req(&E, "GET", "/api/workers", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "{\"groups\":[]}");
    tf_http_resp_free(&r);

    char id[80];
    ae_checkout(&E, "c", "p1", 1, id);
    create_groups();
    redisReply *x = ae_cmd(&E, "XREADGROUP GROUP choreo-audit w1 COUNT 1 STREAMS " AE_BUS " >");
    freeReplyObject(x);
    ae_req(&E, "GET", "/api/workers", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    json_t *j = ae_json(&r);
    json_t *gs = json_object_get(j, "groups");
    cr_assert_eq(json_array_size(gs), 6);
    bool seen = false;
    for (size_t i = 0; i < 6; i++) {
        json_t *g = json_array_get(gs, i);
        cr_assert(json_is_integer(json_object_get(g, "consumers")));
        cr_assert(json_is_integer(json_object_get(g, "pending")));
        json_t *lag = json_object_get(g, "lag");
        cr_assert(json_is_integer(lag) || json_is_null(lag));
        cr_assert(json_is_string(json_object_get(g, "last_delivered_id")));
        if (!strcmp(jstr(g, "group"), "choreo-audit")) {
            seen = true;
            cr_assert_eq(jint(g, "consumers"), 1);
            cr_assert_eq(jint(g, "pending"), 1);
            cr_assert_eq(jint(g, "lag"), 0);
        } else if (!strcmp(jstr(g, "group"), "choreo-cqrs")) {
            cr_assert_eq(jint(g, "lag"), 1);
        }
    }
    cr_assert(seen);
    json_decref(j);
    tf_http_resp_free(&r);
}

Test(api, dead_letters_are_listed_and_retried_to_their_group_once)
{
    char id[80];
    ae_checkout(&E, "c", "p1", 1, id);
    redisReply *x = ae_cmd(&E, "XRANGE " AE_BUS " - +");
    redisReply *f = x->element[0]->element[1];
    const char *orig = x->element[0]->element[0]->str;
    redisReply *d = ae_cmd(&E, "XADD " AE_BUS ".dlq.choreo-order * group choreo-order reason boom attempts 5 stream " AE_BUS
                               " entry_id %s type %s payload %s ts %s",
                           orig, f->element[1]->str, f->element[3]->str, f->element[5]->str);
    char dlid[64];
    snprintf(dlid, sizeof dlid, "%s", d->str);
    freeReplyObject(d);
    /* ids are per stream: give this one an id no other stream has */
    freeReplyObject(ae_cmd(&E, "XADD " AE_BUS ".dlq.choreo-audit 5-5 group choreo-audit reason undecodable attempts 1 "
                               "stream " AE_BUS " entry_id 1-1 type Weird payload {oops ts 12.5"));

    tf_http_resp r;
    ae_req(&E, "GET", "/api/dead-letters", NULL, NULL, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    json_t *j = ae_json(&r);
    json_t *dl = json_object_get(j, "dead_letters");
    cr_assert_eq(json_array_size(dl), 2);
    json_t *one = NULL;
    for (size_t i = 0; i < 2; i++)
        if (!strcmp(jstr(json_array_get(dl, i), "group"), "choreo-order"))
            one = json_array_get(dl, i);
    cr_assert_not_null(one);
    cr_assert_str_eq(jstr(one, "id"), dlid);
    cr_assert_str_eq(jstr(one, "reason"), "boom");
    cr_assert_eq(jint(one, "attempts"), 5);
    json_t *ev = json_object_get(one, "event");
    cr_assert_str_eq(jstr(ev, "id"), orig);
    cr_assert_str_eq(jstr(ev, "type"), "CheckoutInitiated");
    cr_assert(json_is_object(json_object_get(ev, "payload")));
    cr_assert(json_is_number(json_object_get(ev, "ts")));
    json_decref(j);
    tf_http_resp_free(&r);
    freeReplyObject(x);

    char path[200];
    snprintf(path, sizeof path, "/api/dead-letters/%s/retry", dlid);
    ae_req(&E, "POST", path, "Authorization: Bearer " AE_TOKEN "\r\n", NULL, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    j = ae_json(&r);
    cr_assert_str_eq(jstr(j, "group"), "choreo-order");
    json_decref(j);
    tf_http_resp_free(&r);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS ".dlq.choreo-order"), 0);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS ".retry.choreo-order"), 1);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS), 1, "a retry is not re-published to every group");

    ae_req(&E, "POST", path, "Authorization: Bearer " AE_TOKEN "\r\n", NULL, &r);
    ae_assert_error(&r, 404, "not_found");
    tf_http_resp_free(&r);
    ae_req(&E, "POST", "/api/dead-letters/garbage/retry", "Authorization: Bearer " AE_TOKEN "\r\n", NULL, &r);
    ae_assert_error(&r, 404, "not_found");
    tf_http_resp_free(&r);
}

Test(api, health_ready_and_metrics)
{
    tf_http_resp r;
    ae_req(&E, "GET", "/health", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    tf_http_resp_free(&r);

    ae_req(&E, "GET", "/ready", NULL, NULL, &r);
    cr_assert_eq(r.status, 503, "ready without consumer groups");
    cr_assert(strstr(r.body, "choreo-cqrs"), "names what is missing: %s", r.body);
    tf_http_resp_free(&r);
    create_groups();
    ae_req(&E, "GET", "/ready", NULL, NULL, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    tf_http_resp_free(&r);

    char id[80];
    ae_checkout(&E, "c", "p1", 1, id);
    ae_req(&E, "GET", "/api/products/ghost", NULL, NULL, &r);
    tf_http_resp_free(&r);
    ae_req(&E, "GET", "/metrics", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    char ct[128];
    cr_assert_not_null(tf_http_header(&r, "Content-Type", ct, sizeof ct));
    cr_assert(strstr(ct, "text/plain"));
    cr_assert(strstr(r.body, "http_requests_total{method=\"POST\",route=\"/api/checkouts\",status=\"202\"} 1\n"), "%s",
              r.body);
    cr_assert(strstr(r.body, "http_requests_total{method=\"GET\",route=\"/api/products/{id}\",status=\"404\"} 1\n"));
    cr_assert(strstr(r.body, "http_request_duration_seconds_bucket{route=\"/api/checkouts\",le=\"+Inf\"} 1\n"));
    cr_assert(strstr(r.body, "events_published_total{topic=\"" AE_BUS "\",type=\"CheckoutInitiated\"} 1\n"));
    cr_assert(!strstr(r.body, id), "a raw path leaked into a label");
    tf_http_resp_free(&r);
}

Test(api, unknown_route_404_wrong_method_405_with_allow_and_head_works)
{
    tf_http_resp r;
    const char *paths[] = {"/", "/api", "/api/checkoutsX", "/api/checkouts/a/b", "/api/products/p1/x", "/../etc/passwd"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        ae_req(&E, "GET", paths[i], NULL, NULL, &r);
        ae_assert_error(&r, 404, "not_found");
        tf_http_resp_free(&r);
    }
    struct { const char *m, *path, *allow; } cases[] = {
        {"GET", "/api/checkouts", "POST"},
        {"DELETE", "/api/products/p1", "GET, HEAD, PUT"},
        {"POST", "/api/products", "GET, HEAD"},
        {"GET", "/api/dead-letters/1-0/retry", "POST"},
        {"PATCH", "/metrics", "GET, HEAD"},
        {"BREW", "/health", "GET, HEAD"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ae_req(&E, cases[i].m, cases[i].path, NULL, NULL, &r);
        ae_assert_error(&r, 405, "method_not_allowed");
        char allow[64];
        cr_assert_not_null(tf_http_header(&r, "Allow", allow, sizeof allow));
        cr_assert_str_eq(allow, cases[i].allow);
        tf_http_resp_free(&r);
    }
    ae_req(&E, "HEAD", "/api/products", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.body_len, 0);
    tf_http_resp_free(&r);
    ae_req(&E, "GET", "/api/products/", NULL, NULL, &r);
    cr_assert_eq(r.status, 200, "a trailing slash is ignored");
    tf_http_resp_free(&r);
}

Test(api, every_request_is_logged_as_one_json_line)
{
    char id[80];
    ae_checkout(&E, "c", "p1", 1, id);
    tf_http_resp r;
    ae_req(&E, "GET", "/nope", NULL, NULL, &r);
    tf_http_resp_free(&r);
    ae_stop_api(&E);   /* flushes nothing: lines are written whole, but be sure all are in */
    FILE *f = fopen(E.log, "r");
    cr_assert_not_null(f);
    char line[4096];
    bool intake = false, notfound = false;
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        cr_assert_not_null(j, "not a JSON line: %s", line);
        if (jstr(j, "message") && !strcmp(jstr(j, "message"), "request")) {
            cr_assert_not_null(jstr(j, "method"));
            cr_assert_not_null(jstr(j, "route"));
            cr_assert_not_null(jstr(j, "status"));
            cr_assert_not_null(jstr(j, "duration_ms"));
            if (!strcmp(jstr(j, "route"), "/api/checkouts") && !strcmp(jstr(j, "status"), "202")) {
                intake = true;
                cr_assert_str_eq(jstr(j, "checkout_id") ?: "", id);
            }
            if (!strcmp(jstr(j, "route"), "unmatched") && !strcmp(jstr(j, "status"), "404"))
                notfound = true;
        }
        json_decref(j);
    }
    fclose(f);
    cr_assert(intake && notfound, "missing request lines");
}
