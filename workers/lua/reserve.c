/* reserve.c - reserve.lua's call: KEYS and ARGV by name, reply as an outcome. */
#include "workers/lua/scripts.h"
#include "common/names.h"

extern const char wk_lua_reserve[];
static cm_script k_reserve = {.src = wk_lua_reserve};

static const wk_refusal k_refusals[] = {
    {"short", WK_OUT_SHORT},
    {"unknown", WK_OUT_UNKNOWN},
    {"exists", WK_OUT_EXISTS},
    {NULL, WK_OUT_EREDIS},
};

static void build(const char *checkout, const wk_lines *lines, cm_argv *keys, cm_argv *args)
{
    cm_argv_adds(keys, cm_key_resv(checkout).s);   /* KEYS: resv, product... */
    wk_lines_keys(lines, keys);
    cm_argv_addll(args, (long long)lines->n);      /* ARGV: m, (product, qty)... */
    for (size_t i = 0; i < lines->n; i++) {
        cm_argv_adds(args, lines->v[i].product_id);
        cm_argv_addll(args, (long long)lines->v[i].qty);
    }
}

void wk_script_reserve_prefetch(wk_ctx *ctx, wk_step *s, const char *checkout, const wk_lines *lines, void *plan,
                                void (*plan_free)(void *))
{
    cm_argv keys = {0}, args = {0};
    build(checkout, lines, &keys, &args);
    wk_prefetch_add(ctx, s, &k_reserve, &keys, &args, plan, plan_free);
    cm_argv_free(&keys);
    cm_argv_free(&args);
}

wk_outcome wk_script_reserve(wk_ctx *ctx, wk_step *s, const char *checkout, const wk_lines *lines,
                             wk_step_out *out)
{
    cm_argv keys = {0}, args = {0};
    build(checkout, lines, &keys, &args);
    wk_outcome rc = wk_step_outcome(ctx, &k_reserve, s, &keys, &args, k_refusals, out);
    cm_argv_free(&keys);
    cm_argv_free(&args);
    return rc;
}
