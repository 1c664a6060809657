/* create_order.c - create_order.lua's call: KEYS and ARGV by name, reply as
 * an outcome. */
#include "workers/lua/scripts.h"
#include "common/names.h"

extern const char wk_lua_create_order[];
static cm_script k_create_order = {.src = wk_lua_create_order};

static const wk_refusal k_refusals[] = {
    {"not_held", WK_OUT_NOT_HELD},
    {"mismatch", WK_OUT_MISMATCH},
    {NULL, WK_OUT_EREDIS},
};

int wk_script_create_order_queue(wk_ctx *ctx, cm_pipe *p, wk_step *s, const wk_order_in *in)
{
    cm_argv keys = {0}, args = {0};
    cm_argv_adds(&keys, cm_key_resv(in->checkout_id).s);   /* KEYS: resv, order, started */
    cm_argv_adds(&keys, cm_key_order(in->checkout_id, in->order_id).s);
    cm_argv_adds(&keys, cm_key_saga_started(cm_partition_of(in->checkout_id)).s);
    cm_argv_adds(&args, in->checkout_id);                  /* ARGV: in the .lua's order */
    cm_argv_adds(&args, in->order_id);
    cm_argv_adds(&args, in->client_id);
    cm_argv_addll(&args, in->total_cents);
    cm_argv_adds(&args, in->items_json);
    cm_argv_addf(&args, "%.6f", in->created_at);
    cm_argv_addll(&args, in->resv_ttl_s);
    cm_argv_addll(&args, (long long)in->lines->n);
    for (size_t i = 0; i < in->lines->n; i++)
        cm_argv_adds(&args, in->lines->v[i].product_id);
    int idx = wk_step_queue(ctx, p, &k_create_order, s, &keys, &args);
    cm_argv_free(&keys);
    cm_argv_free(&args);
    return idx;
}

wk_outcome wk_script_create_order_take(wk_ctx *ctx, cm_pipe *p, int idx, wk_step *s, wk_step_out *out)
{
    return wk_step_take(ctx, p, idx, s, k_refusals, out);
}
