/* release.c - release.lua's call: KEYS and ARGV by name, reply as an outcome. */
#include "workers/lua/scripts.h"
#include "common/names.h"

extern const char wk_lua_release[];
static cm_script k_release = {.src = wk_lua_release};

static const wk_refusal k_refusals[] = {
    {"changed", WK_OUT_CHANGED},
    {"mismatch", WK_OUT_MISMATCH},
    {NULL, WK_OUT_EREDIS},
};

wk_outcome wk_script_release(wk_ctx *ctx, wk_step *s, const char *checkout, bool held, const wk_lines *lines,
                             long long resv_ttl_s, wk_step_out *out)
{
    cm_argv keys = {0}, args = {0};
    cm_argv_adds(&keys, cm_key_resv(checkout).s);   /* KEYS: resv, started, product... (held only) */
    cm_argv_adds(&keys, cm_key_saga_started(cm_partition_of(checkout)).s);
    if (held)
        wk_lines_keys(lines, &keys);
    cm_argv_adds(&args, checkout);                  /* ARGV: checkout, held, ttl, m, product... */
    cm_argv_adds(&args, held ? "1" : "0");
    cm_argv_addll(&args, resv_ttl_s);
    cm_argv_addll(&args, held ? (long long)lines->n : 0);
    for (size_t i = 0; held && i < lines->n; i++)
        cm_argv_adds(&args, lines->v[i].product_id);
    wk_outcome rc = wk_step_outcome(ctx, &k_release, s, &keys, &args, k_refusals, out);
    cm_argv_free(&keys);
    cm_argv_free(&args);
    return rc;
}
