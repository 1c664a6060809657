/* read.c - summing and merging the per-partition read models (read.h).
 *
 * Each reader queues one command per partition on a cm_pipe, sends them
 * together, and folds the replies with the rule that makes the sum equal
 * to what one unpartitioned model would hold: counters add up; the client's
 * last order is the greatest (time, checkout id) as apply.lua picks it; a
 * client's index keeps each partition's newest PJ_CLIENT_CHECKOUTS_MAX, so
 * the newest of their union are the client's newest overall. */
#include "projections/read.h"
#include "common/ids.h"
#include "common/redis.h"
#include "common/xmalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef cm_key (*key_fn)(int p, const char *id);

/* Sends `<cmd> <key of p> <args...>` for every partition p (argv built by
 * add_args after the key) and hands back the replies, one per partition
 * (caller frees them and the array). PJ_EREDIS with err on I/O or an error
 * reply (every reply freed then). */
static int per_partition(cm_cluster *cc, const char *cmd, key_fn key, const char *id, const char *const *args,
                         redisReply ***out, char *err, size_t errlen)
{
    int n = cm_partitions();
    cm_pipe *pipe = cm_pipe_new(cc);
    for (int p = 0; p < n; p++) {
        cm_argv a = {0};
        cm_key k = key(p, id);
        cm_argv_adds(&a, cmd);
        cm_argv_adds(&a, k.s);
        for (const char *const *s = args; s && *s; s++)
            cm_argv_adds(&a, *s);
        cm_pipe_argv(pipe, cm_key_slot(k.s, strlen(k.s)), &a);
        cm_argv_free(&a);
    }
    redisReply **r = cm_xcalloc((size_t)n, sizeof *r);
    int rc = PJ_OK;
    if (cm_pipe_exec(pipe) != 0) {
        snprintf(err, errlen, "%s", cm_cluster_errstr(cc));
        rc = PJ_EREDIS;
    }
    for (int p = 0; p < n; p++) {
        r[p] = cm_pipe_take(pipe, (size_t)p);
        if (rc == PJ_OK && !r[p]) {
            snprintf(err, errlen, "%s: no reply", cmd);
            rc = PJ_EREDIS;
        } else if (rc == PJ_OK && r[p]->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis: %.*s", (int)r[p]->len, r[p]->str);
            rc = PJ_EREDIS;
        }
    }
    cm_pipe_free(pipe);
    if (rc != PJ_OK) {
        for (int p = 0; p < n; p++)
            freeReplyObject(r[p]);
        free(r);
        r = NULL;
    }
    *out = r;
    return rc;
}

static void free_replies(redisReply **r)
{
    for (int p = 0; r && p < cm_partitions(); p++)
        freeReplyObject(r[p]);
    free(r);
}

static bool is_id(const char *s)
{
    return s && cm_id_valid(s, strlen(s), 64);
}

int pj_read_stock(cm_cluster *cc, const char *product_id, pj_stock_view *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!is_id(product_id)) {
        snprintf(err, errlen, "product id is not an id");
        return PJ_EINVAL;
    }
    redisReply **r;
    static const char *const fields[] = {"reserved", "sold", "released", NULL};
    int rc = per_partition(cc, "HMGET", cm_key_rm_stock, product_id, fields, &r, err, errlen);
    if (rc != PJ_OK)
        return rc;
    long long *sum[] = {&out->reserved, &out->sold, &out->released};
    for (int p = 0; p < cm_partitions(); p++)
        for (size_t f = 0; f < 3; f++) {
            const redisReply *v = cm_reply_elem(r[p], f);
            if (cm_reply_is_str(v)) {
                out->found = true;
                *sum[f] += cm_reply_ll(v, 0);
            }
        }
    free_replies(r);
    return PJ_OK;
}

/* apply.lua's `newer`: (t, checkout) after (lt, lc), or there is no (lt, lc). */
static bool newer(const char *t, const char *checkout, const char *lt, const char *lc)
{
    if (!lt[0] || !lc[0])
        return true;
    double a = strtod(t, NULL), b = strtod(lt, NULL);
    return a > b || (a == b && strcmp(checkout, lc) > 0);
}

static void copy_str(char *dst, size_t cap, const redisReply *v)
{
    snprintf(dst, cap, "%.*s", cm_reply_is_str(v) ? (int)v->len : 0, cm_reply_is_str(v) ? v->str : "");
}

int pj_read_client(cm_cluster *cc, const char *client_id, pj_client_view *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!is_id(client_id)) {
        snprintf(err, errlen, "client id is not an id");
        return PJ_EINVAL;
    }
    redisReply **r;
    static const char *const fields[] = {"total_orders", "last_order_id", "last_checkout_id", "last_update_ts",
                                         NULL};
    int rc = per_partition(cc, "HMGET", cm_key_rm_client, client_id, fields, &r, err, errlen);
    if (rc != PJ_OK)
        return rc;
    for (int p = 0; p < cm_partitions(); p++) {
        const redisReply *total = cm_reply_elem(r[p], 0), *order = cm_reply_elem(r[p], 1),
                         *checkout = cm_reply_elem(r[p], 2), *ts = cm_reply_elem(r[p], 3);
        if (!cm_reply_is_str(total))
            continue;
        out->found = true;
        out->total_orders += cm_reply_ll(total, 0);
        if (cm_reply_is_str(checkout) && cm_reply_is_str(ts) && checkout->len && ts->len &&
            newer(ts->str, checkout->str, out->last_update_ts, out->last_checkout_id)) {
            copy_str(out->last_order_id, sizeof out->last_order_id, order);
            copy_str(out->last_checkout_id, sizeof out->last_checkout_id, checkout);
            copy_str(out->last_update_ts, sizeof out->last_update_ts, ts);
        }
    }
    free_replies(r);
    return PJ_OK;
}

/* Newest first; equal times: the greater id first (ZREVRANGE's order). */
static int ref_cmp(const void *a, const void *b)
{
    const pj_checkout_ref *x = a, *y = b;
    if (x->initiated_at != y->initiated_at)
        return x->initiated_at > y->initiated_at ? -1 : 1;
    return -strcmp(x->id, y->id);
}

int pj_read_client_checkouts(cm_cluster *cc, const char *client_id, size_t count, pj_checkout_ref **out, size_t *n,
                             char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    if (!is_id(client_id)) {
        snprintf(err, errlen, "client id is not an id");
        return PJ_EINVAL;
    }
    if (count < 1 || count > PJ_CLIENT_CHECKOUTS_MAX) {
        snprintf(err, errlen, "count %zu outside 1..%d", count, PJ_CLIENT_CHECKOUTS_MAX);
        return PJ_EINVAL;
    }
    char stop[24];
    snprintf(stop, sizeof stop, "%zu", count - 1);
    const char *const args[] = {"0", stop, "WITHSCORES", NULL};
    redisReply **r;
    int rc = per_partition(cc, "ZREVRANGE", cm_key_rm_client_checkouts, client_id, args, &r, err, errlen);
    if (rc != PJ_OK)
        return rc;
    size_t total = 0;
    for (int p = 0; p < cm_partitions(); p++)
        total += r[p]->type == REDIS_REPLY_ARRAY ? r[p]->elements / 2 : 0;
    pj_checkout_ref *refs = total ? cm_xcalloc(total, sizeof *refs) : NULL;
    size_t k = 0;
    for (int p = 0; p < cm_partitions(); p++)
        for (size_t i = 0; r[p]->type == REDIS_REPLY_ARRAY && i + 1 < r[p]->elements; i += 2) {
            const redisReply *id = r[p]->element[i], *score = r[p]->element[i + 1];
            char *end;
            if (!cm_reply_is_str(id) || !cm_id_valid(id->str, id->len, 64) || !cm_reply_is_str(score))
                continue;   /* not a member the projection writes */
            double t = strtod(score->str, &end);
            if (end == score->str)
                continue;
            snprintf(refs[k].id, sizeof refs[k].id, "%s", id->str);
            refs[k++].initiated_at = t;
        }
    free_replies(r);
    if (k > 1)
        qsort(refs, k, sizeof *refs, ref_cmp);
    *n = k < count ? k : count;
    if (!*n) {
        free(refs);
        refs = NULL;
    }
    *out = refs;
    return PJ_OK;
}

static cm_key checkpoint_key(int p, const char *unused)
{
    (void)unused;
    return cm_key_rm_checkpoint(p);
}

int pj_read_checkpoint(cm_cluster *cc, char out[48], char *err, size_t errlen)
{
    out[0] = '\0';
    redisReply **r;
    int rc = per_partition(cc, "GET", checkpoint_key, "", NULL, &r, err, errlen);
    if (rc != PJ_OK)
        return rc;
    unsigned long long bms = 0, bseq = 0, ms, seq;
    for (int p = 0; p < cm_partitions(); p++)
        if (cm_reply_is_str(r[p]) && r[p]->len < 48 && cm_stream_id_parse(r[p]->str, &ms, &seq) &&
            (!out[0] || ms > bms || (ms == bms && seq > bseq))) {
            bms = ms;
            bseq = seq;
            snprintf(out, 48, "%s", r[p]->str);
        }
    free_replies(r);
    return PJ_OK;
}
