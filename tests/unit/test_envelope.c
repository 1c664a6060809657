/* test_envelope.c - the event envelope (event_store/event.h) and the checkout
 * fold, as pure code: encode -> decode round trips, every rejection a foreign
 * producer could cause (answered with an error naming the problem, never a
 * crash), the API answer shape, and the fold of every saga shape. */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/ids.h"
#include "common/names.h"
#include "event_store/event.h"
#include "event_store/store.h"

#define EID "0190f8a2-1234-7abc-8def-0123456789ab"
#define CAUSE "0190f8a2-1234-7abc-8def-ffffffffffff"

/* A valid payload as a JSON object, for tests to break one field at a time. */
static json_t *valid_payload(void)
{
    return json_pack("{s:s, s:s, s:i, s:s, s:s, s:i, s:s, s:n, s:s, s:f, s:{s:s}}", "event_id", EID, "type",
                     "StockReserved", "schema", 1, "aggregate", "checkout", "aggregate_id", "co-1", "seq", 2,
                     "correlation_id", "co-1", "causation_id", "producer", "stock-reservation", "emitted_at",
                     1691234567.89, "data", "client_id", "c1");
}

/* Decodes payload text p with entry type `type` and ts; returns the rc. */
static int decode(const char *type, const char *p, size_t plen, const char *ts, es_event **ev, char *err,
                  size_t errlen)
{
    return es_event_decode("1700000000000-0", type, strlen(type), p, plen, ts, strlen(ts), ev, err, errlen);
}

/* Asserts that payload object o (consumed) is rejected with an error containing want. */
static void expect_reject_obj(json_t *o, const char *want)
{
    char *p = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    cr_assert_not_null(p);
    es_event *ev = (es_event *)0x1;
    char err[256] = "";
    int rc = decode("StockReserved", p, strlen(p), "1691234567.89", &ev, err, sizeof err);
    cr_assert_eq(rc, -1, "accepted %s", p);
    cr_assert_null(ev);
    cr_assert(strstr(err, want) != NULL, "error \"%s\" does not mention \"%s\" (payload %s)", err, want, p);
    cr_assert(strstr(err, "1700000000000-0") != NULL, "error \"%s\" does not name the entry", err);
    free(p);
}

/* Asserts that raw payload text p is rejected with an error containing want. */
static void expect_reject_raw(const char *type, const char *p, size_t plen, const char *ts, const char *want)
{
    es_event *ev = (es_event *)0x1;
    char err[256] = "";
    int rc = es_event_decode("1-0", type, strlen(type), p, plen, ts, strlen(ts), &ev, err, sizeof err);
    cr_assert_eq(rc, -1);
    cr_assert_null(ev);
    cr_assert(strstr(err, want) != NULL, "error \"%s\" does not mention \"%s\"", err, want);
}

/* Encodes a new event at seq and decodes it back (the store's path). */
static es_event *encode_decode(const es_new_event *ne, const char *agg_id, const char *corr, int64_t seq,
                               es_encoded *enc)
{
    es_encode(ne, "checkout", agg_id, corr, "api", enc);
    cm_buf p = CM_BUF_INIT;
    cm_buf_put(&p, enc->head.data, enc->head.len);
    cm_buf_printf(&p, "%lld", (long long)seq);
    cm_buf_put(&p, enc->tail.data, enc->tail.len);
    es_event *ev = NULL;
    char err[256] = "";
    int rc = decode(ne->type, p.data, p.len, enc->ts, &ev, err, sizeof err);
    cr_assert_eq(rc, 0, "round trip failed: %s (payload %s)", err, p.data);
    cm_buf_free(&p);
    return ev;
}

Test(envelope, encode_decode_round_trips_every_field)
{
    json_t *data = json_pack("{s:s, s:[{s:s, s:i, s:i}], s:i, s:s}", "client_id", "cl\xc3\xa9nt-\xe6\xbc\xa2\xf0\x9f\x98\x80",
                             "items", "product_id", "p-1", "quantity", 2, "unit_price_cents", 1250,
                             "total_cents", 2500, "note", "quote \" backslash \\ newline \n tab \t");
    es_new_event ne = {.event_id = EID, .type = "CheckoutInitiated", .causation_id = NULL, .data = data};
    es_encoded enc = {0};
    es_event *ev = encode_decode(&ne, "co-\"1\"\n", NULL, 1, &enc);

    cr_assert_str_eq(ev->entry_id, "1700000000000-0");
    cr_assert_str_eq(ev->event_id, EID);
    cr_assert_str_eq(enc.event_id, EID);
    cr_assert_str_eq(ev->type, "CheckoutInitiated");
    cr_assert_eq(ev->kind, CM_EV_CHECKOUT_INITIATED);
    cr_assert_eq(ev->schema, ES_SCHEMA_VERSION);
    cr_assert_str_eq(ev->aggregate, "checkout");
    cr_assert_str_eq(ev->aggregate_id, "co-\"1\"\n");
    cr_assert_eq(ev->seq, 1);
    cr_assert_str_eq(ev->correlation_id, "co-\"1\"\n", "correlation defaults to the aggregate id");
    cr_assert_null(ev->causation_id, "a saga's first event has a null causation");
    cr_assert_str_eq(ev->producer, "api");
    cr_assert_str_eq(ev->ts, enc.ts);
    cr_assert_float_eq(ev->emitted_at, strtod(enc.ts, NULL), 1e-6);
    cr_assert(json_equal(ev->data, data), "data differs after the round trip");
    cr_assert_str_eq(es_event_data_str(ev, "client_id"), "cl\xc3\xa9nt-\xe6\xbc\xa2\xf0\x9f\x98\x80");
    cr_assert_null(es_event_data_str(ev, "total_cents"), "a number is not a string member");
    cr_assert_null(es_event_data_str(ev, "absent"));
    cr_assert_eq(ev->payload_len, strlen(ev->payload));

    es_event_free(ev);
    es_encoded_free(&enc);
    json_decref(data);
}

Test(envelope, encode_decode_keeps_causation_and_correlation)
{
    json_t *data = json_pack("{s:s}", "order_id", "ord-1");
    es_new_event ne = {.event_id = NULL, .type = "OrderCreated", .causation_id = CAUSE, .data = data};
    es_encoded enc = {0};
    es_event *ev = encode_decode(&ne, "co-2", "saga-2", 7, &enc);
    cr_assert(cm_uuid_valid(ev->event_id), "a fresh event id is a UUID, got %s", ev->event_id);
    cr_assert_str_eq(ev->event_id, enc.event_id);
    cr_assert_str_eq(ev->causation_id, CAUSE);
    cr_assert_str_eq(ev->correlation_id, "saga-2");
    cr_assert_eq(ev->seq, 7);
    cr_assert_eq(ev->kind, CM_EV_ORDER_CREATED);
    es_event_free(ev);
    es_encoded_free(&enc);
    json_decref(data);
}

Test(envelope, encode_without_data_stores_an_empty_object)
{
    es_new_event ne = {.event_id = EID, .type = "CheckoutTimedOut"};
    es_encoded enc = {0};
    es_event *ev = encode_decode(&ne, "co-3", NULL, 3, &enc);
    cr_assert(json_is_object(ev->data) && json_object_size(ev->data) == 0);
    es_event_free(ev);
    es_encoded_free(&enc);
}

Test(envelope, foreign_type_decodes_as_unknown_kind)
{
    es_new_event ne = {.event_id = EID, .type = "SomethingElseHappened"};
    es_encoded enc = {0};
    es_event *ev = encode_decode(&ne, "co-4", NULL, 1, &enc);
    cr_assert_eq(ev->kind, CM_EV_UNKNOWN);
    cr_assert_str_eq(ev->type, "SomethingElseHappened");
    es_event_free(ev);
    es_encoded_free(&enc);
}

Test(envelope, decode_rejects_non_json)
{
    const char *p = "this is not json";
    expect_reject_raw("StockReserved", p, strlen(p), "1.5", "not JSON");
    const char *trunc = "{\"event_id\":";
    expect_reject_raw("StockReserved", trunc, strlen(trunc), "1.5", "not JSON");
    expect_reject_raw("StockReserved", "", 0, "1.5", "not JSON");
    const char *badutf8 = "{\"a\":\"\xff\xfe\"}";
    expect_reject_raw("StockReserved", badutf8, strlen(badutf8), "1.5", "not JSON");
}

Test(envelope, decode_rejects_json_that_is_not_an_object)
{
    const char *arr = "[1,2,3]";
    expect_reject_raw("StockReserved", arr, strlen(arr), "1.5", "not a JSON object");
    const char *str = "\"text\"";
    expect_reject_raw("StockReserved", str, strlen(str), "1.5", "not");
}

Test(envelope, decode_rejects_duplicate_keys)
{
    json_t *o = valid_payload();
    char *p = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    /* a second "seq" member appended before the closing brace */
    size_t n = strlen(p);
    char *dup = malloc(n + 16);
    memcpy(dup, p, n - 1);
    strcpy(dup + n - 1, ",\"seq\":9}");
    expect_reject_raw("StockReserved", dup, strlen(dup), "1.5", "not JSON");
    free(dup);
    free(p);
}

Test(envelope, decode_rejects_each_missing_required_field)
{
    static const struct {
        const char *field, *want;
    } cases[] = {
        {"event_id", "\"event_id\""},     {"type", "\"type\""},
        {"aggregate", "\"aggregate\""},   {"aggregate_id", "\"aggregate_id\""},
        {"correlation_id", "\"correlation_id\""}, {"producer", "\"producer\""},
        {"schema", "schema"},             {"seq", "seq"},
        {"emitted_at", "emitted_at"},     {"data", "data"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *o = valid_payload();
        cr_assert_eq(json_object_del(o, cases[i].field), 0);
        expect_reject_obj(o, cases[i].want);
    }
    /* null is as good as missing for a required string */
    json_t *o = valid_payload();
    json_object_set_new(o, "producer", json_null());
    expect_reject_obj(o, "\"producer\"");
    /* ...and empty or non-string is refused too */
    o = valid_payload();
    json_object_set_new(o, "aggregate_id", json_string(""));
    expect_reject_obj(o, "\"aggregate_id\"");
    o = valid_payload();
    json_object_set_new(o, "correlation_id", json_integer(5));
    expect_reject_obj(o, "\"correlation_id\"");
    o = valid_payload();
    json_object_set_new(o, "causation_id", json_string(""));
    expect_reject_obj(o, "\"causation_id\"");
}

Test(envelope, decode_accepts_the_valid_payload_used_by_the_rejection_tests)
{
    json_t *o = valid_payload();
    char *p = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    es_event *ev = NULL;
    char err[256] = "";
    cr_assert_eq(decode("StockReserved", p, strlen(p), "1691234567.89", &ev, err, sizeof err), 0, "%s", err);
    cr_assert_null(ev->causation_id, "JSON null causation decodes as NULL");
    cr_assert_eq(ev->seq, 2);
    es_event_free(ev);
    free(p);
}

Test(envelope, decode_rejects_type_mismatch_between_field_and_payload)
{
    json_t *o = valid_payload();
    char *p = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    expect_reject_raw("CheckoutSucceeded", p, strlen(p), "1.5", "type");
    free(p);
}

Test(envelope, decode_rejects_bad_event_id)
{
    const char *bad[] = {"not-a-uuid", "0190f8a2-1234-7abc-8def-0123456789a", "0190f8a2x1234-7abc-8def-0123456789ab",
                         "0190f8a2-1234-7abc-8def-0123456789zz"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *o = valid_payload();
        json_object_set_new(o, "event_id", json_string(bad[i]));
        expect_reject_obj(o, "UUID");
    }
}

Test(envelope, decode_rejects_unknown_schema)
{
    json_t *o = valid_payload();
    json_object_set_new(o, "schema", json_integer(2));
    expect_reject_obj(o, "schema");
    o = valid_payload();
    json_object_set_new(o, "schema", json_string("1"));
    expect_reject_obj(o, "schema");
    o = valid_payload();
    json_object_set_new(o, "schema", json_real(1.0));
    expect_reject_obj(o, "schema");
}

Test(envelope, decode_rejects_seq_below_one_or_not_an_integer)
{
    json_t *vals[] = {json_integer(0), json_integer(-1), json_string("1"), json_real(1.5), json_null(),
                      json_true()};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        json_t *o = valid_payload();
        json_object_set_new(o, "seq", vals[i]);
        expect_reject_obj(o, "seq");
    }
}

Test(envelope, decode_rejects_emitted_at_that_is_not_a_number)
{
    json_t *o = valid_payload();
    json_object_set_new(o, "emitted_at", json_string("1691234567.89"));
    expect_reject_obj(o, "emitted_at");
    o = valid_payload();
    json_object_set_new(o, "emitted_at", json_null());
    expect_reject_obj(o, "emitted_at");
}

Test(envelope, decode_rejects_data_that_is_not_an_object)
{
    json_t *vals[] = {json_pack("[i]", 1), json_string("x"), json_integer(3), json_null()};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        json_t *o = valid_payload();
        json_object_set_new(o, "data", vals[i]);
        expect_reject_obj(o, "data");
    }
}

Test(envelope, decode_rejects_bad_ts_field)
{
    json_t *o = valid_payload();
    char *p = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    const char *bad[] = {"", "abc", "1.5x", "-1", "nan", "inf", "1e999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_reject_raw("StockReserved", p, strlen(p), bad[i], "ts");
    /* a ts with a NUL inside is not a number either */
    es_event *ev = (es_event *)0x1;
    char err[256] = "";
    cr_assert_eq(es_event_decode("1-0", "StockReserved", 13, p, strlen(p), "1.5\0x", 5, &ev, err, sizeof err), -1);
    cr_assert_null(ev);
    free(p);
}

Test(envelope, decode_rejects_empty_or_binary_type_field)
{
    json_t *o = valid_payload();
    char *p = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    expect_reject_raw("", p, strlen(p), "1.5", "type");
    es_event *ev = (es_event *)0x1;
    char err[256] = "";
    cr_assert_eq(es_event_decode("1-0", "Stock\0Reserved", 14, p, strlen(p), "1.5", 3, &ev, err, sizeof err), -1);
    cr_assert_null(ev);
    cr_assert(strstr(err, "type") != NULL, "%s", err);
    free(p);
}

Test(envelope, decode_rejects_huge_payload_without_parsing_it)
{
    size_t n = 2 * 1024 * 1024;
    char *p = malloc(n);
    memset(p, ' ', n);
    p[0] = '{';
    p[n - 1] = '}';
    expect_reject_raw("StockReserved", p, n, "1.5", "larger");
    free(p);
}

Test(envelope, decode_rejects_overlong_strings)
{
    char big[400];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    json_t *o = valid_payload();
    json_object_set_new(o, "aggregate_id", json_string(big));
    expect_reject_obj(o, "aggregate_id");
}

/* Builds a hiredis entry reply [id, [k, v, ...]] on the heap (freed by freeReplyObject). */
static redisReply *str_reply(const char *s, size_t n)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_STRING;
    r->str = malloc(n + 1);
    memcpy(r->str, s, n);
    r->str[n] = '\0';
    r->len = n;
    return r;
}

static redisReply *arr_reply(size_t n)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_ARRAY;
    r->elements = n;
    r->element = calloc(n ? n : 1, sizeof *r->element);
    return r;
}

static redisReply *entry_reply(const char *id, const char *const *kv, size_t nkv)
{
    redisReply *e = arr_reply(2);
    e->element[0] = str_reply(id, strlen(id));
    e->element[1] = arr_reply(nkv);
    for (size_t i = 0; i < nkv; i++)
        e->element[1]->element[i] = str_reply(kv[i], strlen(kv[i]));
    return e;
}

Test(envelope, from_entry_decodes_a_stream_entry_and_ignores_extra_fields)
{
    json_t *o = valid_payload();
    char *p = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    const char *kv[] = {"extra", "x", "type", "StockReserved", "payload", p, "ts", "1691234567.89", "more", "y"};
    redisReply *e = entry_reply("1691234567890-3", kv, 10);
    es_event *ev = NULL;
    char err[256] = "";
    cr_assert_eq(es_event_from_entry(e, &ev, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(ev->entry_id, "1691234567890-3");
    cr_assert_str_eq(ev->ts, "1691234567.89");
    cr_assert_str_eq(ev->payload, p);
    cr_assert_eq(ev->kind, CM_EV_STOCK_RESERVED);
    es_event_free(ev);
    freeReplyObject(e);
    free(p);
}

Test(envelope, from_entry_rejects_foreign_shapes_without_crashing)
{
    es_event *ev = (es_event *)0x1;
    char err[256] = "";
    cr_assert_eq(es_event_from_entry(NULL, &ev, err, sizeof err), -1);
    cr_assert_null(ev);

    const char *missing_ts[] = {"type", "StockReserved", "payload", "{}"};
    redisReply *e = entry_reply("5-0", missing_ts, 4);
    cr_assert_eq(es_event_from_entry(e, &ev, err, sizeof err), -1);
    cr_assert(strstr(err, "ts") && strstr(err, "5-0"), "%s", err);
    freeReplyObject(e);

    const char *odd[] = {"type", "StockReserved", "payload"};
    e = entry_reply("6-0", odd, 3);
    cr_assert_eq(es_event_from_entry(e, &ev, err, sizeof err), -1);
    freeReplyObject(e);

    const char *junk[] = {"foo", "bar"};
    e = entry_reply("7-0", junk, 2);
    cr_assert_eq(es_event_from_entry(e, &ev, err, sizeof err), -1);
    cr_assert(strstr(err, "type") != NULL, "%s", err);
    freeReplyObject(e);

    /* a deleted entry's fields come back as nil */
    e = arr_reply(2);
    e->element[0] = str_reply("8-0", 3);
    e->element[1] = calloc(1, sizeof(redisReply));
    e->element[1]->type = REDIS_REPLY_NIL;
    cr_assert_eq(es_event_from_entry(e, &ev, err, sizeof err), -1);
    freeReplyObject(e);

    /* not an entry at all */
    e = str_reply("hello", 5);
    cr_assert_eq(es_event_from_entry(e, &ev, err, sizeof err), -1);
    freeReplyObject(e);
    cr_assert_null(ev);
}

/* Parses out's text and checks the answer shape {"id","type","payload","ts"}. */
static json_t *parse_answer(const cm_buf *out)
{
    json_error_t jerr;
    json_t *j = json_loadb(out->data, out->len, 0, &jerr);
    cr_assert_not_null(j, "es_event_to_json wrote invalid JSON: %s (%s)", out->data, jerr.text);
    cr_assert(json_is_string(json_object_get(j, "id")));
    cr_assert(json_is_string(json_object_get(j, "type")));
    cr_assert_not_null(json_object_get(j, "payload"));
    cr_assert_not_null(json_object_get(j, "ts"));
    return j;
}

Test(envelope, to_json_writes_the_answer_shape_with_the_payload_as_an_object)
{
    json_t *data = json_pack("{s:s}", "client_id", "\xe6\xbc\xa2");
    es_new_event ne = {.event_id = EID, .type = "CheckoutInitiated", .data = data};
    es_encoded enc = {0};
    es_event *ev = encode_decode(&ne, "co-5", NULL, 1, &enc);
    cm_buf out = CM_BUF_INIT;
    es_event_to_json(ev, &out);
    json_t *j = parse_answer(&out);
    cr_assert_str_eq(json_string_value(json_object_get(j, "id")), "1700000000000-0");
    cr_assert_str_eq(json_string_value(json_object_get(j, "type")), "CheckoutInitiated");
    json_t *payload = json_object_get(j, "payload");
    cr_assert(json_is_object(payload));
    cr_assert_str_eq(json_string_value(json_object_get(payload, "event_id")), EID);
    cr_assert(json_equal(json_object_get(payload, "data"), data));
    cr_assert(json_is_number(json_object_get(j, "ts")), "ts is a number");
    cr_assert_float_eq(json_number_value(json_object_get(j, "ts")), strtod(enc.ts, NULL), 1e-6);
    json_decref(j);
    cm_buf_free(&out);
    es_event_free(ev);
    es_encoded_free(&enc);
    json_decref(data);
}

Test(envelope, to_json_stays_valid_json_for_odd_but_accepted_ts)
{
    json_t *o = valid_payload();
    char *p = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    const char *odd[] = {".5", "5.", "+5", " 5", "0x10", "1691234567.89", "1e3"};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        es_event *ev = NULL;
        char err[256] = "";
        if (decode("StockReserved", p, strlen(p), odd[i], &ev, err, sizeof err) != 0)
            continue; /* rejecting is fine too */
        cm_buf out = CM_BUF_INIT;
        es_event_to_json(ev, &out);
        json_t *j = parse_answer(&out);
        json_decref(j);
        cm_buf_free(&out);
        es_event_free(ev);
    }
    free(p);
}

Test(envelope, to_json_embeds_a_foreign_payload_as_a_string)
{
    /* what es_stream_page returns for an entry that does not decode */
    es_event ev = {.entry_id = "9-0", .type = "", .kind = CM_EV_UNKNOWN, .ts = "not a ts",
                   .payload = "junk \"quoted\" \x01 \xff", .payload_len = 17};
    cm_buf out = CM_BUF_INIT;
    es_event_to_json(&ev, &out);
    json_t *j = parse_answer(&out);
    cr_assert(json_is_string(json_object_get(j, "payload")));
    cr_assert_str_eq(json_string_value(json_object_get(j, "ts")), "not a ts");
    json_decref(j);
    cm_buf_free(&out);
}

/* ---- the fold ---------------------------------------------------------- */

typedef struct saga {
    es_event *evs[16];
    size_t n;
} saga;

/* Appends an event of type t with data (a json_pack format and args) to s. */
static void add(saga *s, const char *t, json_t *data)
{
    char eid[37];
    cm_uuid7(eid);
    es_new_event ne = {.event_id = eid, .type = t, .causation_id = s->n ? s->evs[s->n - 1]->event_id : NULL,
                       .data = data};
    es_encoded enc = {0};
    cr_assert_lt(s->n, 16);
    s->evs[s->n] = encode_decode(&ne, "co-saga", NULL, (int64_t)s->n + 1, &enc);
    s->n++;
    es_encoded_free(&enc);
    json_decref(data);
}

static void saga_free(saga *s)
{
    for (size_t i = 0; i < s->n; i++)
        es_event_free(s->evs[i]);
    s->n = 0;
}

static void initiated(saga *s)
{
    add(s, "CheckoutInitiated",
        json_pack("{s:s, s:[{s:s, s:i, s:i}], s:i}", "client_id", "client-7", "items", "product_id", "p-1", "quantity",
                  2, "unit_price_cents", 750, "total_cents", 1500));
}

static void fold(const saga *s, es_checkout_state *st)
{
    es_checkout_fold(s->evs, s->n, st);
}

Test(fold, no_events_is_pending)
{
    es_checkout_state st;
    es_checkout_fold(NULL, 0, &st);
    cr_assert_str_eq(st.status, CM_STATUS_PENDING);
    cr_assert_eq(st.version, 0);
    cr_assert_not(st.terminal);
}

Test(fold, succeeded_saga)
{
    saga s = {0};
    es_checkout_state st;
    initiated(&s);
    fold(&s, &st);
    cr_assert_str_eq(st.status, CM_STATUS_PENDING);
    cr_assert_str_eq(st.client_id, "client-7");
    cr_assert_eq(st.total_cents, 1500);
    add(&s, "StockReserved", json_pack("{s:s, s:[]}", "client_id", "client-7", "items"));
    fold(&s, &st);
    cr_assert_str_eq(st.status, CM_STATUS_STOCK_RESERVED);
    cr_assert(st.reserved);
    add(&s, "OrderCreated", json_pack("{s:s, s:s, s:i}", "order_id", "ord-1", "client_id", "client-7",
                                      "total_cents", 1500));
    fold(&s, &st);
    cr_assert_str_eq(st.order_id, "ord-1");
    cr_assert_not(st.reserved, "the reservation became a sale");
    add(&s, "CheckoutSucceeded", json_pack("{s:s}", "order_id", "ord-1"));
    fold(&s, &st);
    cr_assert_str_eq(st.status, CM_STATUS_SUCCEEDED);
    cr_assert_str_eq(st.order_id, "ord-1");
    cr_assert_str_eq(st.reason, "");
    cr_assert_eq(st.version, 4);
    cr_assert(st.terminal);
    cr_assert_eq(st.terminal_events, 1);
    cr_assert_not(st.failing);
    cr_assert_float_eq(st.updated_at, s.evs[3]->emitted_at, 1e-9);
    saga_free(&s);
}

Test(fold, stock_failure_saga)
{
    saga s = {0};
    es_checkout_state st;
    initiated(&s);
    add(&s, "StockReservationFailed", json_pack("{s:s, s:s}", "reason", CM_REASON_INSUFFICIENT_STOCK,
                                                "product_id", "p-1"));
    fold(&s, &st);
    cr_assert_str_eq(st.status, CM_STATUS_PENDING);
    cr_assert(st.failing);
    cr_assert_str_eq(st.reason, CM_REASON_INSUFFICIENT_STOCK);
    add(&s, "CheckoutFailed", json_pack("{s:s}", "reason", CM_REASON_INSUFFICIENT_STOCK));
    fold(&s, &st);
    cr_assert_str_eq(st.status, CM_STATUS_FAILED);
    cr_assert_str_eq(st.reason, CM_REASON_INSUFFICIENT_STOCK);
    cr_assert_str_eq(st.order_id, "");
    cr_assert_not(st.failing);
    cr_assert_not(st.reserved);
    cr_assert(st.terminal);
    cr_assert_eq(st.terminal_events, 1);
    cr_assert_eq(st.version, 3);
    saga_free(&s);
}

Test(fold, order_failure_with_compensation_saga)
{
    saga s = {0};
    es_checkout_state st;
    initiated(&s);
    add(&s, "StockReserved", json_pack("{s:s, s:[]}", "client_id", "client-7", "items"));
    add(&s, "OrderCreationFailed", json_pack("{s:s}", "reason", CM_REASON_ORDER_LIMIT));
    fold(&s, &st);
    cr_assert(st.failing);
    cr_assert(st.reserved, "still held until StockReleased");
    cr_assert_not(st.terminal);
    cr_assert_str_eq(st.reason, CM_REASON_ORDER_LIMIT);
    add(&s, "StockReleased", json_pack("{s:[]}", "items"));
    fold(&s, &st);
    cr_assert_not(st.reserved);
    add(&s, "CheckoutFailed", json_pack("{s:s}", "reason", CM_REASON_ORDER_LIMIT));
    fold(&s, &st);
    cr_assert_str_eq(st.status, CM_STATUS_FAILED);
    cr_assert_str_eq(st.reason, CM_REASON_ORDER_LIMIT);
    cr_assert_str_eq(st.order_id, "");
    cr_assert_not(st.reserved);
    cr_assert_not(st.failing);
    cr_assert_eq(st.terminal_events, 1);
    cr_assert_eq(st.version, 5);
    saga_free(&s);
}

Test(fold, timed_out_saga)
{
    saga s = {0};
    es_checkout_state st;
    initiated(&s);
    add(&s, "StockReserved", json_pack("{s:s, s:[]}", "client_id", "client-7", "items"));
    add(&s, "CheckoutTimedOut", json_pack("{s:i}", "after_ms", 30000));
    fold(&s, &st);
    cr_assert(st.timed_out);
    cr_assert(st.failing);
    cr_assert_str_eq(st.reason, CM_REASON_TIMED_OUT);
    add(&s, "StockReleased", json_pack("{s:[]}", "items"));
    add(&s, "CheckoutFailed", json_pack("{s:s}", "reason", CM_REASON_TIMED_OUT));
    fold(&s, &st);
    cr_assert_str_eq(st.status, CM_STATUS_FAILED);
    cr_assert_str_eq(st.reason, CM_REASON_TIMED_OUT);
    cr_assert(st.timed_out);
    cr_assert_not(st.reserved);
    cr_assert_eq(st.terminal_events, 1);
    cr_assert_eq(st.version, 5);
    saga_free(&s);
}

Test(fold, duplicate_terminal_is_counted)
{
    saga s = {0};
    es_checkout_state st;
    initiated(&s);
    add(&s, "StockReserved", json_pack("{s:s, s:[]}", "client_id", "client-7", "items"));
    add(&s, "OrderCreated", json_pack("{s:s}", "order_id", "ord-9"));
    add(&s, "CheckoutSucceeded", json_pack("{s:s}", "order_id", "ord-9"));
    add(&s, "CheckoutFailed", json_pack("{s:s}", "reason", CM_REASON_TIMED_OUT));
    fold(&s, &st);
    cr_assert(st.terminal);
    cr_assert_eq(st.terminal_events, 2, "a second terminal event is visible to checks");
    saga_free(&s);
}

Test(fold, unknown_events_count_in_version_and_change_nothing_else)
{
    saga s = {0};
    es_checkout_state st;
    initiated(&s);
    add(&s, "SomethingForeign", json_pack("{s:s}", "reason", "ignored"));
    fold(&s, &st);
    cr_assert_str_eq(st.status, CM_STATUS_PENDING);
    cr_assert_str_eq(st.reason, "");
    cr_assert_eq(st.version, 2);
    saga_free(&s);
}

Test(fold, state_json_is_valid_json)
{
    saga s = {0};
    es_checkout_state st;
    initiated(&s);
    add(&s, "CheckoutFailed", json_pack("{s:s}", "reason", CM_REASON_INJECTED_FAULT));
    fold(&s, &st);
    cm_buf out = CM_BUF_INIT;
    es_checkout_state_json(&st, &out);
    json_error_t jerr;
    json_t *j = json_loadb(out.data, out.len, 0, &jerr);
    cr_assert_not_null(j, "%s: %s", out.data, jerr.text);
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), CM_STATUS_FAILED);
    cr_assert_str_eq(json_string_value(json_object_get(j, "reason")), CM_REASON_INJECTED_FAULT);
    cr_assert(json_is_null(json_object_get(j, "order_id")));
    cr_assert_eq(json_integer_value(json_object_get(j, "version")), 2);
    json_decref(j);
    cm_buf_free(&out);
    saga_free(&s);
}

/* ---- the fast decoding path agrees with jansson ------------------------- */

/* The envelope rules of DESIGN.md applied to jansson's own parse: the
 * oracle the decoder (with its fast path) must agree with. Returns the
 * parsed root when payload is a valid envelope of entry type `type`. */
static json_t *oracle(const char *type, const char *p, size_t n)
{
    json_t *root = json_loadb(p, n, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(root))
        goto bad;
    static const char *const req[] = {"event_id", "type", "aggregate", "aggregate_id", "correlation_id", "producer"};
    for (size_t i = 0; i < 6; i++) {
        json_t *v = json_object_get(root, req[i]);
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 256)
            goto bad;
    }
    json_t *c = json_object_get(root, "causation_id");
    if (c && !json_is_null(c) && (!json_is_string(c) || json_string_length(c) == 0 || json_string_length(c) > 256))
        goto bad;
    if (strcmp(json_string_value(json_object_get(root, "type")), type) ||
        !cm_uuid_valid(json_string_value(json_object_get(root, "event_id"))))
        goto bad;
    json_t *schema = json_object_get(root, "schema"), *seq = json_object_get(root, "seq");
    if (!json_is_integer(schema) || json_integer_value(schema) != 1 || !json_is_integer(seq) ||
        json_integer_value(seq) < 1 || !json_is_number(json_object_get(root, "emitted_at")) ||
        !json_is_object(json_object_get(root, "data")))
        goto bad;
    return root;
bad:
    json_decref(root);
    return NULL;
}

static void str_member_eq(const char *got, json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        cr_assert_null(got, "%s", key);
    else
        cr_assert_str_eq(got, json_string_value(v), "%s", key);
}

/* Decodes p and checks that the decoder and the oracle agree exactly. */
static int agree(const char *type, const char *p, size_t n)
{
    es_event *ev = NULL;
    char err[256];
    int rc = es_event_decode("1-0", type, strlen(type), p, n, "1.5", 3, &ev, err, sizeof err);
    json_t *root = oracle(type, p, n);
    cr_assert_eq(rc == 0, root != NULL, "decoder %s, oracle %s: %.*s", rc ? "rejects" : "accepts",
                 root ? "accepts" : "rejects", (int)n, p);
    if (root) {
        str_member_eq(ev->event_id, root, "event_id");
        str_member_eq(ev->aggregate, root, "aggregate");
        str_member_eq(ev->aggregate_id, root, "aggregate_id");
        str_member_eq(ev->correlation_id, root, "correlation_id");
        str_member_eq(ev->causation_id, root, "causation_id");
        str_member_eq(ev->producer, root, "producer");
        cr_assert_eq(ev->seq, json_integer_value(json_object_get(root, "seq")));
        cr_assert_eq(ev->schema, 1);
        cr_assert(ev->emitted_at == json_number_value(json_object_get(root, "emitted_at")));
        cr_assert(json_equal(ev->data, json_object_get(root, "data")), "data differs: %.*s", (int)n, p);
        json_t *d = json_object_get(root, "data"); /* same number kinds too */
        json_t *items = json_object_get(d, "n");
        if (items)
            cr_assert_eq(json_typeof(json_object_get(ev->data, "n")), json_typeof(items));
        cr_assert_eq(ev->payload_len, n);
        cr_assert_eq(memcmp(ev->payload, p, n), 0);
    }
    es_event_free(ev);
    json_decref(root);
    return rc;
}

Test(envelope, decoder_agrees_with_jansson_on_mutated_payloads)
{
    json_t *datas[] = {
        json_pack("{s:s, s:[{s:s, s:i, s:i}], s:i}", "client_id", "c1", "items", "product_id", "p-1", "quantity", 2,
                  "unit_price_cents", 750, "total_cents", 1500),
        json_pack("{s:s, s:f, s:b, s:n, s:[], s:{}}", "client_id", "cl\xc3\xa9ment \"q\" \\", "n", -0.25, "ok", 1,
                  "z", "e", "o"),
        json_pack("{s:I, s:f, s:[i, f, s]}", "big", (json_int_t)999999999999999999LL, "n", 1e300, "l", -7, 3.5, "\n"),
        json_object(),
    };
    const char ins[] = "\"\\,:{}[] 01-.eEntf\xc3\xa9" "a\x01\t";
    unsigned seed = 1234567;
    int accepted = 0, rejected = 0;
    for (size_t d = 0; d < sizeof datas / sizeof datas[0]; d++) {
        char eid[37];
        cm_uuid7(eid);
        es_new_event ne = {.event_id = eid, .type = "StockReserved", .causation_id = d % 2 ? CAUSE : NULL,
                           .data = datas[d]};
        es_encoded enc = {0};
        es_encode(&ne, "checkout", "co-1", NULL, "api", &enc);
        cm_buf base = CM_BUF_INIT;
        cm_buf_put(&base, enc.head.data, enc.head.len);
        cm_buf_puts(&base, "42");
        cm_buf_put(&base, enc.tail.data, enc.tail.len);
        cr_assert_eq(agree("StockReserved", base.data, base.len), 0, "%s", base.data);

        /* the same envelope re-serialised by jansson: indented, sorted, unicode unescaped */
        json_t *root = json_loadb(base.data, base.len, 0, NULL);
        char *pretty = json_dumps(root, JSON_INDENT(3) | JSON_SORT_KEYS);
        cr_assert_eq(agree("StockReserved", pretty, strlen(pretty)), 0);
        free(pretty);
        json_object_set_new(root, "extra", json_string("foreign member"));
        pretty = json_dumps(root, JSON_COMPACT);
        cr_assert_eq(agree("StockReserved", pretty, strlen(pretty)), 0, "unknown members are ignored");
        free(pretty);
        json_decref(root);
        cr_assert_neq(agree("OrderCreated", base.data, base.len), 0);

        for (int iter = 0; iter < 5000; iter++) {
            cm_buf m = CM_BUF_INIT;
            cm_buf_put(&m, base.data, base.len);
            int edits = 1 + (int)((seed >> 8) % 3);
            for (int e = 0; e < edits && m.len > 2; e++) {
                seed = seed * 1103515245u + 12345u;
                size_t at = (seed >> 8) % m.len;
                unsigned op = (seed >> 24) % 6;
                char c = ins[(seed >> 4) % (sizeof ins - 1)];
                cm_buf t = CM_BUF_INIT;
                cm_buf_put(&t, m.data, at);
                if (op == 0) { /* delete */
                    cm_buf_put(&t, m.data + at + 1, m.len - at - 1);
                } else if (op == 1) { /* insert */
                    cm_buf_putc(&t, c);
                    cm_buf_put(&t, m.data + at, m.len - at);
                } else if (op == 2) { /* replace */
                    cm_buf_putc(&t, c);
                    cm_buf_put(&t, m.data + at + 1, m.len - at - 1);
                } else if (op == 3) { /* a member again after the opening brace */
                    static const char *const again[] = {
                        "\"seq\":7,", "\"causation_id\":null,", "\"data\":{},", "\"type\":\"StockReserved\",",
                        "\"event_id\":\"" EID "\",", "\"schema\":1,", "\"emitted_at\":1,", "\"other\":1,",
                    };
                    cm_buf_reset(&t);
                    cm_buf_putc(&t, '{');
                    cm_buf_puts(&t, again[(seed >> 5) % (sizeof again / sizeof again[0])]);
                    cm_buf_put(&t, m.data + 1, m.len - 1);
                } else if (op == 4) { /* trailing bytes */
                    cm_buf_reset(&t);
                    cm_buf_put(&t, m.data, m.len);
                    cm_buf_putc(&t, c);
                } else { /* a member inside data, perhaps a duplicate */
                    cm_buf_reset(&t);
                    const char *dp = strstr(m.data, "\"data\":{");
                    size_t cut = dp ? (size_t)(dp - m.data) + 8 : m.len;
                    cm_buf_put(&t, m.data, cut);
                    cm_buf_puts(&t, (seed >> 3) % 2 ? "\"client_id\":\"x\"," : "\"k\":1,");
                    cm_buf_put(&t, m.data + cut, m.len - cut);
                }
                cm_buf_free(&m);
                m = t;
            }
            if (agree("StockReserved", m.data, m.len) == 0)
                accepted++;
            else
                rejected++;
            cm_buf_free(&m);
        }
        cm_buf_free(&base);
        es_encoded_free(&enc);
        json_decref(datas[d]);
    }
    cr_assert_gt(accepted, 100, "mutations should keep some payloads valid (%d)", accepted);
    cr_assert_gt(rejected, 100);
}

/* Writes an envelope with the given schema, seq, causation member (text
 * with its trailing comma, or ""), emitted_at and data, verbatim. */
static void envelope_with(cm_buf *p, const char *const m[5])
{
    cm_buf_puts(p, "{\"event_id\":\"" EID "\",\"type\":\"StockReserved\",\"schema\":");
    cm_buf_puts(p, m[0]);
    cm_buf_puts(p, ",\"aggregate\":\"checkout\",\"aggregate_id\":\"co-1\",\"seq\":");
    cm_buf_puts(p, m[1]);
    cm_buf_puts(p, ",\"correlation_id\":\"co-1\",");
    cm_buf_puts(p, m[2]);
    cm_buf_puts(p, "\"producer\":\"p\",\"emitted_at\":");
    cm_buf_puts(p, m[3]);
    cm_buf_puts(p, ",\"data\":");
    cm_buf_puts(p, m[4]);
    cm_buf_putc(p, '}');
}

Test(envelope, decoder_agrees_with_jansson_on_edge_cases)
{
    /* whitespace and trailing bytes around an envelope */
    static const char *const around[][2] = {
        {"", ""}, {"", " "}, {"\t\n ", "\r\n"}, {"", "x"}, {"", "}"}, {"", "{}"}, {"", ","}, {"", "\x01"},
    };
    static const char *const members[][5] = {
        /* schema, seq, causation member, emitted_at, data */
        {"1", "1", "", "1.5", "{}"},
        {"1", "1", "\"causation_id\":null,", "2", "{}"},
        {"1", "1", "\"causation_id\":\"\",", "2", "{}"},
        {"1", "1", "\"causation_id\":\"" CAUSE "\",", "2", "{}"},
        {"1", "1", "\"causation_id\":7,", "2", "{}"},
        {"1", "1", "\"causation_id\":null,\"causation_id\":\"" CAUSE "\",", "2", "{}"},
        {"1", "1", "\"causation_id\":\"" CAUSE "\",\"causation_id\":null,", "2", "{}"},
        {"1", "1", "\"causation_id\":null,\"causation_id\":null,", "2", "{}"},
        {"1.0", "1", "", "1", "{}"},
        {"2", "1", "", "1", "{}"},
        {"1", "01", "", "1", "{}"},
        {"1", "1.0", "", "1", "{}"},
        {"1", "1e0", "", "1", "{}"},
        {"1", "-1", "", "1", "{}"},
        {"1", "0", "", "1", "{}"},
        {"1", "12345678901234567890", "", "1", "{}"},
        {"1", "123456789012345678", "", "1", "{}"},
        {"1", "1", "", "-0.5e-3", "{}"},
        {"1", "1", "", "1e999", "{}"},
        {"1", "1", "", "1E+2", "{}"},
        {"1", "1", "", "-", "{}"},
        {"1", "1", "", "1.", "{}"},
        {"1", "1", "", ".5", "{}"},
        {"1", "1", "", "\"1\"", "{}"},
        {"1", "1", "", "1", "{\"a\":1,\"a\":2}"},
        {"1", "1", "", "1", "{\"a\":{\"b\":1,\"b\":1}}"},
        {"1", "1", "", "1", "{\"a\":[1,2,],\"b\":1}"},
        {"1", "1", "", "1", "{\"a\":[ ],\"b\":{ }}"},
        {"1", "1", "", "1", "{\"a\":\"\\u00e9\\n\\\"\"}"},
        {"1", "1", "", "1", "{\"a\":\"\xc3\xa9\"}"},
        {"1", "1", "", "1", "{\"a\":\"\xc3\"}"},
        {"1", "1", "", "1", "{\"a\":\"tab\there\"}"},
        {"1", "1", "", "1", "{\"a\":12345678901234567890123}"},
        {"1", "1", "", "1", "{\"a\":-0,\"b\":0.0,\"c\":1e-400,\"d\":true,\"e\":false,\"f\":null}"},
        {"1", "1", "", "1", "{\"a\":tru}"},
        {"1", "1", "", "1", "{\"a\":nul}"},
        {"1", "1", "", "1", "{\"\":1}"},
        {"1", "1", "", "1", "[]"},
        {"1", "1", "", "1", "{} "},
        {"1", "1", "", "1", "{\"a\" : 1 , \"b\" :[ 1 , 2 ] }"},
    };
    for (size_t m = 0; m < sizeof members / sizeof members[0]; m++) {
        for (size_t c = 0; c < sizeof around / sizeof around[0]; c++) {
            cm_buf p = CM_BUF_INIT;
            cm_buf_puts(&p, around[c][0]);
            envelope_with(&p, members[m]);
            cm_buf_puts(&p, around[c][1]);
            agree("StockReserved", p.data, p.len);
            cm_buf_free(&p);
        }
    }
    /* deep nesting: beyond the fast path, still valid JSON */
    cm_buf deep = CM_BUF_INIT;
    for (int i = 0; i < 40; i++)
        cm_buf_puts(&deep, "{\"a\":");
    cm_buf_puts(&deep, "1");
    for (int i = 0; i < 40; i++)
        cm_buf_putc(&deep, '}');
    const char *const deep_members[5] = {"1", "1", "", "1", deep.data};
    cm_buf p = CM_BUF_INIT;
    envelope_with(&p, deep_members);
    cr_assert_eq(agree("StockReserved", p.data, p.len), 0);
    cm_buf_free(&p);
    cm_buf_free(&deep);
}

Test(envelope, decoded_numbers_equal_what_strtod_gives)
{
    unsigned seed = 99;
    for (int i = 0; i < 20000; i++) {
        seed = seed * 1103515245u + 12345u;
        unsigned a = seed;
        seed = seed * 1103515245u + 12345u;
        char num[64];
        int frac = (int)(seed % 24);
        /* seconds with up to 23 decimals, some beyond 2^53 in total digits */
        snprintf(num, sizeof num, "%s%u.%0*u%u", i % 7 ? "" : "-", a % 2000000000u, frac % 10, seed % 1000000u,
                 a % 97u);
        const char *const m[5] = {"1", "1", "", num, "{\"x\":0}"};
        cm_buf p = CM_BUF_INIT;
        envelope_with(&p, m);
        cr_assert_eq(agree("StockReserved", p.data, p.len), 0, "%s", num);
        cm_buf_free(&p);
    }
}

Test(envelope, decode_survives_absurd_nesting)
{
    /* 900k open brackets inside data: refused, without exhausting the stack */
    cm_buf deep = CM_BUF_INIT;
    cm_buf_puts(&deep, "{\"a\":");
    for (size_t i = 0; i < 900000; i++)
        cm_buf_putc(&deep, '[');
    const char *const m[5] = {"1", "1", "", "1", deep.data};
    cm_buf p = CM_BUF_INIT;
    envelope_with(&p, m);
    expect_reject_raw("StockReserved", p.data, p.len, "1.5", "not JSON");
    cm_buf_free(&p);
    cm_buf_free(&deep);
}

Test(fold, apply_one_at_a_time_equals_fold)
{
    saga s = {0};
    initiated(&s);
    add(&s, "StockReserved", json_pack("{s:s, s:[]}", "client_id", "client-7", "items"));
    add(&s, "OrderCreationFailed", json_pack("{s:s}", "reason", CM_REASON_ORDER_LIMIT));
    add(&s, "StockReleased", json_pack("{s:[]}", "items"));
    add(&s, "CheckoutFailed", json_pack("{s:s}", "reason", CM_REASON_ORDER_LIMIT));
    es_checkout_state a, b;
    es_checkout_fold(s.evs, s.n, &a);
    es_checkout_init(&b);
    for (size_t i = 0; i < s.n; i++)
        es_checkout_apply(&b, s.evs[i]);
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0);
    saga_free(&s);
}
