/* notify.c - notify.lua's call: KEYS and ARGV by name, reply as a verdict. */
#include "workers/lua/scripts.h"
#include "common/clock.h"
#include "common/names.h"

#include <stdio.h>
#include <string.h>

extern const char wk_lua_notify[];
static cm_script k_notify = {.src = wk_lua_notify};

int wk_script_notify(cm_cluster *cc, const wk_notify_in *in, wk_notify_out *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    cm_argv a = {0};
    cm_argv_adds(&a, cm_key_notify(in->checkout_id).s);   /* KEYS: marker, log */
    cm_argv_adds(&a, cm_key_notify_log(cm_partition_of(in->checkout_id)).s);
    cm_argv_adds(&a, in->checkout_id);                     /* ARGV: in the .lua's order */
    cm_argv_adds(&a, in->status);
    cm_argv_adds(&a, in->field);
    cm_argv_adds(&a, in->value);
    cm_argv_adds(&a, in->event_id);
    cm_argv_addll(&a, in->ttl_s);
    if (in->ttl_s > 0)
        cm_argv_addf(&a, "%lld-0", (long long)(cm_wall_ms() - in->ttl_s * 1000));
    else
        cm_argv_adds(&a, "0");
    /* marker and log carry the checkout's partition tag: one slot */
    redisReply *r = cm_cluster_script(cc, &k_notify, 2, &a);
    cm_argv_free(&a);
    if (cm_cluster_reply_failed(cc, r, err, errlen))
        return -1;
    const redisReply *verdict = cm_reply_elem(r, 0), *hs = cm_reply_elem(r, 1);
    int rc = 0;
    if (!cm_reply_is_str(verdict) || (strcmp(verdict->str, "new") && strcmp(verdict->str, "dup"))) {
        snprintf(err, errlen, "notify script: unexpected answer");
        rc = -1;
    } else {
        out->fresh = !strcmp(verdict->str, "new");
        out->delivered = cm_reply_is_str(hs) && hs->str[0] == '2';
    }
    freeReplyObject(r);
    return rc;
}
