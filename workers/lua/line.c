/* line.c - line.lua's call: KEYS and ARGV by name, reply as a typed mark. */
#include "workers/lua/scripts.h"
#include "common/names.h"

#include <stdio.h>
#include <string.h>

extern const char wk_lua_line[];
static cm_script k_line = {.src = wk_lua_line};

const char *const wk_mark_names[WK_MARK_COUNT] = {
    [WK_MARK_NONE] = "none",         [WK_MARK_HELD] = "held",   [WK_MARK_SOLD] = "sold",
    [WK_MARK_RELEASED] = "released", [WK_MARK_UNDONE] = "undone", [WK_MARK_SHORT] = "short",
    [WK_MARK_UNKNOWN] = "unknown",   [WK_MARK_VOID] = "void",
};

static const char *const k_ops[] = {
    [WK_LINE_HOLD] = "hold", [WK_LINE_UNDO] = "undo", [WK_LINE_SELL] = "sell", [WK_LINE_RELEASE] = "release"};

int wk_line_queue(wk_ctx *ctx, cm_pipe *p, wk_line_op op, const char *checkout, const wk_line *line,
                  long long ttl_s)
{
    cm_key mark = cm_key_hold(line->product_id, checkout);
    if (!cm_key_ok(&mark)) {
        wk_fail_reason(ctx, "no line mark for product %.64s of %.64s", line->product_id, checkout);
        return -1;
    }
    cm_argv a = {0};
    cm_argv_adds(&a, cm_key_product(line->product_id).s);   /* KEYS: product, mark */
    cm_argv_adds(&a, mark.s);
    cm_argv_adds(&a, k_ops[op]);                             /* ARGV: op, qty, ttl */
    cm_argv_addll(&a, (long long)line->qty);
    cm_argv_addll(&a, ttl_s);
    int idx = (int)cm_pipe_count(p);
    if (cm_pipe_script(p, &k_line, 2, &a) != 0) {
        wk_fail_reason(ctx, "line script: %s", cm_cluster_errstr(wk_cluster(ctx)));
        idx = -1;
    }
    cm_argv_free(&a);
    return idx;
}

int wk_line_take(wk_ctx *ctx, cm_pipe *p, int idx, wk_line_res *out)
{
    memset(out, 0, sizeof *out);
    if (idx < 0)
        return -1;
    redisReply *r = cm_pipe_take(p, (size_t)idx);
    if (!r) {
        wk_fail_reason(ctx, "line script: no reply (%s)", cm_cluster_errstr(wk_cluster(ctx)));
        return -1;
    }
    int rc = -1;
    const redisReply *st = cm_reply_elem(r, 0);
    if (r->type == REDIS_REPLY_ERROR) {
        wk_fail_reason(ctx, "line script: %.200s", r->str);
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || !cm_reply_is_str(st)) {
        wk_fail_reason(ctx, "line script: unexpected reply");
    } else {
        for (int m = 0; m < WK_MARK_COUNT && rc != 0; m++)
            if (!strcmp(st->str, wk_mark_names[m])) {
                out->mark = (wk_mark)m;
                out->qty = cm_reply_ll(r->element[1], 0);
                out->changed = cm_reply_ll(r->element[2], 0) == 1;
                rc = 0;
            }
        if (rc != 0)
            wk_fail_reason(ctx, "line script: unknown mark %.64s", st->str);
    }
    freeReplyObject(r);
    return rc;
}

int wk_line_run(wk_ctx *ctx, wk_line_op op, const char *checkout, const wk_lines *lines, long long ttl_s,
                wk_line_res *res)
{
    cm_pipe *p = cm_pipe_new(wk_cluster(ctx));
    int idx[WK_SAGA_MAX_LINES];
    int rc = 0;
    for (size_t i = 0; i < lines->n && rc == 0; i++)
        if ((idx[i] = wk_line_queue(ctx, p, op, checkout, &lines->v[i], ttl_s)) < 0)
            rc = -1;
    if (rc == 0) {
        wk_pipe_exec(ctx, p);
        for (size_t i = 0; i < lines->n; i++)
            if (wk_line_take(ctx, p, idx[i], &res[i]) != 0)
                rc = -1;
    }
    cm_pipe_free(p);
    return rc;
}
