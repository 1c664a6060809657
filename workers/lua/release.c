/* release.c - release.lua's call: KEYS and ARGV by name, reply as an outcome. */
#include "workers/lua/scripts.h"
#include "common/names.h"

extern const char wk_lua_release[];
static cm_script k_release = {.src = wk_lua_release};

static const wk_refusal k_refusals[] = {
    {"changed", WK_OUT_CHANGED},
    {NULL, WK_OUT_EREDIS},
};

int wk_script_release_queue(wk_ctx *ctx, cm_pipe *p, wk_step *s, const char *checkout, bool released,
                            long long resv_ttl_s)
{
    cm_argv keys = {0}, args = {0};
    cm_argv_adds(&keys, cm_key_resv(checkout).s);   /* KEYS: resv, started */
    cm_argv_adds(&keys, cm_key_saga_started(cm_partition_of(checkout)).s);
    cm_argv_adds(&args, checkout);                  /* ARGV: checkout, released, ttl */
    cm_argv_adds(&args, released ? "1" : "0");
    cm_argv_addll(&args, resv_ttl_s);
    int idx = wk_step_queue(ctx, p, &k_release, s, &keys, &args);
    cm_argv_free(&keys);
    cm_argv_free(&args);
    return idx;
}

wk_outcome wk_script_release_take(wk_ctx *ctx, cm_pipe *p, int idx, wk_step *s, wk_step_out *out)
{
    return wk_step_take(ctx, p, idx, s, k_refusals, out);
}
