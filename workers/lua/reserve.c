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

wk_outcome wk_script_reserve(wk_ctx *ctx, wk_step *s, const char *checkout, const wk_lines *lines,
                             wk_step_out *out)
{
    cm_argv keys = {0}, args = {0};
    cm_argv_adds(&keys, cm_key_resv(checkout).s);   /* KEYS: resv, product... */
    wk_lines_keys(lines, &keys);
    cm_argv_addll(&args, (long long)lines->n);      /* ARGV: m, (product, qty)... */
    for (size_t i = 0; i < lines->n; i++) {
        cm_argv_adds(&args, lines->v[i].product_id);
        cm_argv_addll(&args, (long long)lines->v[i].qty);
    }
    wk_outcome rc = wk_step_outcome(ctx, &k_reserve, s, &keys, &args, k_refusals, out);
    cm_argv_free(&keys);
    cm_argv_free(&args);
    return rc;
}
