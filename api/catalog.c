/* catalog.c - products: list, one, and the admin upsert.
 *
 * A product is the hash chorus:product:<id> {name, price_cents, available,
 * reserved, sold}; chorus:products is the set of ids. The upsert sets name,
 * price and available stock and keeps reserved and sold, which belong to the
 * stock workers (lua/product_put.lua, one atomic step on the hash; the id
 * joins chorus:products in the same pipeline). On a cluster each product's
 * hash is in its own slot: the list reads them with one pipeline split per
 * node. */
#include "api/api_int.h"
#include "common/ids.h"
#include "common/names.h"
#include "common/xmalloc.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_BYTES 200
#define PRICE_MAX 1000000000LL      /* 10 million in cents */
#define STOCK_MAX 1000000000LL
#define LIST_MAX 10000              /* products listed at most */

/* Appends {"product_id",...} from HMGET name price_cents available reserved sold. */
static bool product_json(cm_buf *o, const char *id, size_t idlen, const redisReply *r)
{
    const redisReply *name = cm_reply_elem(r, 0);
    const redisReply *price = cm_reply_elem(r, 1);
    if (!name || !price || name->type != REDIS_REPLY_STRING || price->type != REDIS_REPLY_STRING)
        return false;
    cm_buf_puts(o, "{\"product_id\":");
    cm_buf_put_json_str(o, id, idlen);
    cm_buf_puts(o, ",\"name\":");
    cm_buf_put_json_str(o, name->str, name->len);
    cm_buf_printf(o, ",\"price_cents\":%lld,\"available\":%lld,\"reserved\":%lld,\"sold\":%lld}",
                  cm_reply_ll(price, 0), cm_reply_ll(cm_reply_elem(r, 2), 0), cm_reply_ll(cm_reply_elem(r, 3), 0),
                  cm_reply_ll(cm_reply_elem(r, 4), 0));
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    const redisReply *x = *(const redisReply *const *)a, *y = *(const redisReply *const *)b;
    return strcmp(x->str, y->str);
}

api_flow api_h_products(api_req *rq)
{
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    redisReply *ids = cm_cluster_command(t->cc, api_slot(CM_KEY_PRODUCTS), "SMEMBERS %s", CM_KEY_PRODUCTS);
    if (!api_redis_ok(t, ids)) {
        api_redis_fail(rq, t->fault, t->err);
        return API_DONE;
    }
    size_t n = ids->type == REDIS_REPLY_ARRAY ? ids->elements : 0;
    const redisReply **v = cm_xcalloc(n ? n : 1, sizeof *v);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (ids->element[i]->type == REDIS_REPLY_STRING && k < LIST_MAX)
            v[k++] = ids->element[i];
    qsort(v, k, sizeof *v, cmp_str);
    cm_pipe *p = cm_pipe_new(t->cc);
    for (size_t i = 0; i < k; i++) {
        cm_key key = cm_key_product(v[i]->str);
        cm_pipe_command(p, api_slot(key.s), "HMGET %s name price_cents available reserved sold", key.s);
    }
    bool ok = api_pipe_run(t, p);
    cm_buf *o = &rq->out;
    cm_buf_puts(o, "{\"products\":[");
    bool first = true;
    for (size_t i = 0; ok && i < k; i++) {
        redisReply *r = cm_pipe_take(p, i);
        if (!api_redis_ok(t, r)) {   /* frees r */
            ok = false;
            break;
        }
        size_t mark = o->len;
        if (!first)
            cm_buf_putc(o, ',');
        if (product_json(o, v[i]->str, v[i]->len, r))
            first = false;
        else
            o->len = mark;   /* an id without its hash: skip it */
        o->data[o->len] = '\0';
        freeReplyObject(r);
    }
    cm_buf_puts(o, "]}");
    cm_pipe_free(p);
    free(v);
    freeReplyObject(ids);
    if (ok)
        api_reply(rq, 200);
    else
        api_redis_fail(rq, t->fault, t->err);
    return API_DONE;
}

api_flow api_h_product_get(api_req *rq)
{
    if (!cm_id_valid(rq->param, rq->param_len, API_ID_MAX)) {
        api_error(rq, 404, "unknown_product", "no product with that id (ids are 1..64 characters of [A-Za-z0-9_-])");
        return API_DONE;
    }
    api_redis *t = api_redis_for(rq);
    if (!t)
        return API_DONE;
    cm_key key = cm_key_product(rq->param);
    redisReply *r = cm_cluster_command(t->cc, api_slot(key.s), "HMGET %s name price_cents available reserved sold",
                                       key.s);
    if (!api_redis_ok(t, r)) {
        api_redis_fail(rq, t->fault, t->err);
        return API_DONE;
    }
    if (product_json(&rq->out, rq->param, rq->param_len, r))
        api_reply(rq, 200);
    else
        api_error(rq, 404, "unknown_product", "no product %s", rq->param);
    freeReplyObject(r);
    return API_DONE;
}

/* api_redis_ok for a reply whose content does not matter: freed either way. */
static bool reply_fine(api_redis *t, redisReply *r)
{
    if (!api_redis_ok(t, r))
        return false;
    freeReplyObject(r);
    return true;
}

/* Reads integer member key of o in [0, max]; answers 400 otherwise. */
static bool int_field(api_req *rq, json_t *o, const char *key, long long max, long long *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max) {
        api_error(rq, 400, "invalid_request", "%s is required and must be an integer in 0..%lld", key, max);
        return false;
    }
    *out = (long long)json_integer_value(v);
    return true;
}

api_flow api_h_product_put(api_req *rq)
{
    if (!cm_id_valid(rq->param, rq->param_len, API_ID_MAX)) {
        api_error(rq, 400, "invalid_request", "a product id is 1..64 characters of [A-Za-z0-9_-]");
        return API_DONE;
    }
    json_error_t jerr;
    json_t *root = json_loadb(rq->body.data ? rq->body.data : "", rq->body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        api_error(rq, 400, "invalid_json", "malformed JSON at line %d column %d: %s", jerr.line, jerr.column,
                  jerr.text);
        return API_DONE;
    }
    long long price, avail;
    json_t *name = json_object_get(root, "name");
    if (!json_is_object(root)) {
        api_error(rq, 400, "invalid_request", "the body must be a JSON object");
    } else if (!json_is_string(name) || json_string_length(name) == 0 ||
               json_string_length(name) > NAME_MAX_BYTES || strlen(json_string_value(name)) != json_string_length(name)) {
        api_error(rq, 400, "invalid_request", "name is required and must be a string of 1..%d bytes", NAME_MAX_BYTES);
    } else if (int_field(rq, root, "price_cents", PRICE_MAX, &price) &&
               int_field(rq, root, "available", STOCK_MAX, &avail)) {
        const char *why = NULL;
        api_redis *t = api_redis_get(&why);
        if (!t) {
            api_unavailable(rq, why);
        } else {
            cm_key key = cm_key_product(rq->param);
            cm_argv a = {0};
            cm_argv_adds(&a, key.s);
            cm_argv_add(&a, json_string_value(name), json_string_length(name));
            cm_argv_addll(&a, price);
            cm_argv_addll(&a, avail);
            /* the set first in the queue; either way round, a product whose
             * hash or set entry is missing is fixed by the retry a 503 asks for */
            cm_pipe *p = cm_pipe_new(t->cc);
            cm_pipe_command(p, api_slot(CM_KEY_PRODUCTS), "SADD %s %s", CM_KEY_PRODUCTS, rq->param);
            if (cm_pipe_script(p, &t->product_put, 1, &a) != 0)
                abort();   /* one key: cannot span slots */
            cm_argv_free(&a);
            bool ok = api_pipe_run(t, p) && reply_fine(t, cm_pipe_take(p, 0));   /* SADD */
            redisReply *r = ok ? cm_pipe_take(p, 1) : NULL;
            if (ok && api_redis_ok(t, r)) {
                if (product_json(&rq->out, rq->param, rq->param_len, r))
                    api_reply(rq, 200);
                else
                    api_error(rq, 500, "internal", "unexpected reply from the catalog script");
                freeReplyObject(r);
            } else {
                api_redis_fail(rq, t->fault, t->err);
            }
            cm_pipe_free(p);
        }
    }
    json_decref(root);
    return API_DONE;
}
