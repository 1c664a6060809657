/* intake.c - intake.lua's call (KEYS/ARGV by name, reply as a verdict) and
 * the reading of a catalog price the call is priced from. */
#include "api/lua/intake.h"
#include "common/ids.h"
#include "common/names.h"
#include "event_store/store.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

api_price_verdict api_intake_price(const redisReply *r, long long *price, char *why, size_t whylen)
{
    if (!r) {
        snprintf(why, whylen, "no reply to the price read");
        return API_PRICE_UNAVAILABLE;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(why, whylen, "redis: %.*s", (int)r->len, r->str);
        return cm_redis_fault_of_error(r->str, r->len) == CM_REDIS_PERMANENT ? API_PRICE_BROKEN
                                                                               : API_PRICE_UNAVAILABLE;
    }
    const redisReply *p = cm_reply_elem(r, 0);
    if (!p || p->type == REDIS_REPLY_NIL)
        return API_PRICE_UNKNOWN;
    long long v = 0;
    bool digits = p->type == REDIS_REPLY_STRING && p->len > 0;
    for (size_t i = 0; digits && i < p->len; i++) {
        digits = p->str[i] >= '0' && p->str[i] <= '9';
        if (digits && v <= API_INTAKE_MAX_PRICE)   /* stops growing once past the bound */
            v = v * 10 + (p->str[i] - '0');
    }
    if (!digits || v > API_INTAKE_MAX_PRICE) {
        snprintf(why, whylen, "a stored price_cents is not a number in 0..%lld", API_INTAKE_MAX_PRICE);
        return API_PRICE_BROKEN;
    }
    *price = v;
    return API_PRICE_OK;
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
    if (in->n < 1 || in->n > API_INTAKE_MAX_LINES || in->refused > in->n)
        return -1;
    bool has_key = in->idem_key && in->idem_key[0];
    /* KEYS: idempotency record (or the history again), history, bus: one slot */
    cm_key hist = cm_key_history("checkout", in->checkout_id);
    cm_argv_adds(a, has_key ? cm_key_idem(in->client_id, in->idem_key).s : hist.s);
    cm_argv_adds(a, hist.s);
    cm_argv_adds(a, cm_key_bus(in->bus, cm_partition_of(in->checkout_id)).s);
    *nkeys = a->n;
    /* ARGV: has_key, hash, record, ttl, refused line, confirm, then the append */
    cm_argv_adds(a, has_key ? "1" : "0");
    cm_argv_adds(a, in->body_hash);
    cm_argv_addf(a, "%s\n%s", in->checkout_id, in->answer);
    cm_argv_addll(a, in->idem_ttl_s);
    cm_argv_addll(a, (long long)in->refused);
    cm_argv_adds(a, in->confirm ? "1" : "0");
    if (in->refused)
        return 0;
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

void api_intake_parse(const redisReply *r, const api_intake_call *in, api_intake_reply *out)
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
    if (!strcmp(st->str, "refused")) {
        if (in->refused && cm_reply_ll(arg, 0) == (long long)in->refused) {
            out->verdict = API_INTAKE_REFUSED;
            return;
        }
    } else if (!in->refused) {
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
