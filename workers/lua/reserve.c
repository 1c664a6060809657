/* reserve.c - reserve.lua's call: KEYS and ARGV by name, reply as an outcome. */
#include "workers/lua/scripts.h"
#include "common/names.h"

extern const char wk_lua_reserve[];
static cm_script k_reserve = {.src = wk_lua_reserve};

static const wk_refusal k_refusals[] = {
    {"exists", WK_OUT_EXISTS},
    {NULL, WK_OUT_EREDIS},
};

int wk_script_reserve_queue(wk_ctx *ctx, cm_pipe *p, wk_step *s, const char *checkout, const wk_lines *lines)
{
    cm_argv keys = {0}, args = {0};
    cm_argv_adds(&keys, cm_key_resv(checkout).s);   /* KEYS: resv */
    cm_argv_addll(&args, (long long)lines->n);      /* ARGV: m, (product, qty)... */
    for (size_t i = 0; i < lines->n; i++) {
        cm_argv_adds(&args, lines->v[i].product_id);
        cm_argv_addll(&args, (long long)lines->v[i].qty);
    }
    int idx = wk_step_queue(ctx, p, &k_reserve, s, &keys, &args);
    cm_argv_free(&keys);
    cm_argv_free(&args);
    return idx;
}

wk_outcome wk_script_reserve_take(wk_ctx *ctx, cm_pipe *p, int idx, wk_step *s, wk_step_out *out)
{
    return wk_step_take(ctx, p, idx, s, k_refusals, out);
}
