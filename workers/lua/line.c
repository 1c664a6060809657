/* line.c - line.lua's calls: KEYS and ARGV by name, replies as typed marks.
 *
 * A wk_line_set collects a phase's lines and groups them by (op, product):
 * one script call per group, its lines in the order added, so the stock a
 * batch's checkouts compete for is taken in stream order, as separate calls
 * in that order would. */
#include "workers/lua/scripts.h"
#include "common/names.h"
#include "common/xmalloc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

typedef struct ls_line {
    wk_line_op op;
    char checkout[72];
    wk_line line;
    size_t next;          /* the group's next line (SIZE_MAX: last) */
    int rc;               /* 0 once its result is in */
    wk_line_res res;
} ls_line;

typedef struct ls_group {
    wk_line_op op;
    size_t first, last;   /* its lines, linked by next */
    size_t n;
    int idx;              /* its call in the pipe (-1: none) */
} ls_group;

struct wk_line_set {
    ls_line *l;
    size_t n, cap;
    ls_group *g;
    size_t ng, gcap;
    size_t *index;        /* groups by (op, product): open addressing, SIZE_MAX empty */
    size_t nindex;        /* a power of two, at least twice ng */
};

wk_line_set *wk_line_set_new(void)
{
    return cm_xcalloc(1, sizeof(wk_line_set));
}

void wk_line_set_free(wk_line_set *s)
{
    if (!s)
        return;
    free(s->l);
    free(s->g);
    free(s->index);
    free(s);
}

/* The index slot of (op, product): its group's, or the empty one where it
 * goes. */
static size_t index_slot(const wk_line_set *s, wk_line_op op, const char *product)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)op;   /* FNV-1a */
    for (const unsigned char *c = (const unsigned char *)product; *c; c++)
        h = (h ^ *c) * 1099511628211ULL;
    size_t i = (size_t)h & (s->nindex - 1);
    while (s->index[i] != SIZE_MAX) {
        const ls_group *g = &s->g[s->index[i]];
        if (g->op == op && !strcmp(s->l[g->first].line.product_id, product))
            break;
        i = (i + 1) & (s->nindex - 1);
    }
    return i;
}

/* Makes room in the index for one more group (rehashing every group). */
static void index_grow(wk_line_set *s)
{
    if (s->nindex >= 2 * (s->ng + 1))
        return;
    free(s->index);
    s->nindex = s->nindex ? 2 * s->nindex : 64;
    s->index = cm_xmalloc(s->nindex * sizeof *s->index);
    for (size_t i = 0; i < s->nindex; i++)
        s->index[i] = SIZE_MAX;
    for (size_t g = 0; g < s->ng; g++)
        s->index[index_slot(s, s->g[g].op, s->l[s->g[g].first].line.product_id)] = g;
}

size_t wk_line_set_add(wk_line_set *s, wk_line_op op, const char *checkout, const wk_line *line)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->l = cm_xrealloc(s->l, s->cap * sizeof *s->l);
    }
    size_t i = s->n++;
    ls_line *l = &s->l[i];
    memset(l, 0, sizeof *l);
    l->op = op;
    snprintf(l->checkout, sizeof l->checkout, "%s", checkout);
    l->line = *line;
    l->next = SIZE_MAX;
    l->rc = -1;
    index_grow(s);
    size_t at = index_slot(s, op, line->product_id);
    if (s->index[at] != SIZE_MAX) {
        ls_group *gr = &s->g[s->index[at]];
        s->l[gr->last].next = i;
        gr->last = i;
        gr->n++;
        return i;
    }
    s->index[at] = s->ng;
    if (s->ng == s->gcap) {
        s->gcap = s->gcap ? 2 * s->gcap : 16;
        s->g = cm_xrealloc(s->g, s->gcap * sizeof *s->g);
    }
    s->g[s->ng++] = (ls_group){.op = op, .first = i, .last = i, .n = 1, .idx = -1};
    return i;
}

void wk_line_set_queue(wk_ctx *ctx, wk_line_set *s, cm_pipe *p, long long ttl_s)
{
    cm_argv a = {0};
    for (size_t g = 0; g < s->ng; g++) {
        ls_group *gr = &s->g[g];
        cm_argv_reset(&a);
        const char *product = s->l[gr->first].line.product_id;
        cm_argv_adds(&a, cm_key_product(product).s);   /* KEYS: product, mark... */
        bool ok = true;
        for (size_t i = gr->first; i != SIZE_MAX && ok; i = s->l[i].next) {
            cm_key mark = cm_key_hold(product, s->l[i].checkout);
            if (!(ok = cm_key_ok(&mark)))
                wk_fail_reason(ctx, "no line mark for product %.64s of %.64s", product, s->l[i].checkout);
            cm_argv_adds(&a, mark.s);
        }
        int numkeys = a.n;
        cm_argv_adds(&a, k_ops[gr->op]);                  /* ARGV: op, ttl, qty... */
        cm_argv_addll(&a, ttl_s);
        for (size_t i = gr->first; i != SIZE_MAX; i = s->l[i].next)
            cm_argv_addll(&a, (long long)s->l[i].line.qty);
        gr->idx = -1;
        if (!ok)
            continue;
        gr->idx = (int)cm_pipe_count(p);
        if (cm_pipe_script(p, &k_line, numkeys, &a) != 0) {
            wk_fail_reason(ctx, "line script: %s", cm_cluster_errstr(wk_cluster(ctx)));
            gr->idx = -1;
        }
    }
    cm_argv_free(&a);
}

/* Parses one line's state, qty, changed (v[0..2] of the flat reply) into
 * out. Returns 0 or -1. */
static int parse_one(redisReply *const *v, wk_line_res *out)
{
    const redisReply *st = v[0];
    if (!cm_reply_is_str(st) || v[1]->type != REDIS_REPLY_INTEGER || v[2]->type != REDIS_REPLY_INTEGER)
        return -1;
    for (int m = 0; m < WK_MARK_COUNT; m++)
        if (!strcmp(st->str, wk_mark_names[m])) {
            out->mark = (wk_mark)m;
            out->qty = v[1]->integer;
            out->changed = v[2]->integer == 1;
            return 0;
        }
    return -1;
}

void wk_line_set_take(wk_ctx *ctx, wk_line_set *s, cm_pipe *p)
{
    for (size_t g = 0; g < s->ng; g++) {
        ls_group *gr = &s->g[g];
        if (gr->idx < 0)
            continue;   /* never queued: the reason is set */
        redisReply *r = cm_pipe_take(p, (size_t)gr->idx);
        if (!r) {
            wk_fail_reason(ctx, "line script: redis: no reply (%s)", cm_cluster_errstr(wk_cluster(ctx)));
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            wk_fail_reason(ctx, "line script: redis: %.200s", r->str);
        } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 * gr->n) {
            wk_fail_reason(ctx, "line script: unexpected reply");
        } else {
            size_t k = 0;   /* 3 values per line */
            for (size_t i = gr->first; i != SIZE_MAX; i = s->l[i].next, k += 3)
                if ((s->l[i].rc = parse_one(r->element + k, &s->l[i].res)) != 0)
                    wk_fail_reason(ctx, "line script: unexpected answer for %.64s", s->l[i].checkout);
        }
        freeReplyObject(r);
    }
}

void wk_line_set_exec(wk_ctx *ctx, wk_line_set *s, cm_pipe *p, long long ttl_s)
{
    wk_line_set_queue(ctx, s, p, ttl_s);
    wk_pipe_exec(ctx, p);
    wk_line_set_take(ctx, s, p);
}

int wk_line_set_res(const wk_line_set *s, size_t i, wk_line_res *out)
{
    memset(out, 0, sizeof *out);
    if (i >= s->n || s->l[i].rc != 0)
        return -1;
    *out = s->l[i].res;
    return 0;
}

int wk_line_run(wk_ctx *ctx, wk_line_op op, const char *checkout, const wk_lines *lines, long long ttl_s,
                wk_line_res *res)
{
    wk_line_set *s = wk_line_set_new();
    for (size_t i = 0; i < lines->n; i++)
        wk_line_set_add(s, op, checkout, &lines->v[i]);
    cm_pipe *p = cm_pipe_new(wk_cluster(ctx));
    wk_line_set_exec(ctx, s, p, ttl_s);
    int rc = 0;
    for (size_t i = 0; i < lines->n; i++)
        if (wk_line_set_res(s, i, &res[i]) != 0)
            rc = -1;
    cm_pipe_free(p);
    wk_line_set_free(s);
    return rc;
}
