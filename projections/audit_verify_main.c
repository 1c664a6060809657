/* audit_verify_main.c - chorus-audit-verify: walks the hash-chained audit
 * log (pj_audit_verify) and reports the first bad record.
 *
 *   chorus-audit-verify [--redis-url=URL]
 *
 * Prints one JSON line {"intact","count","bad_position","bad_entry_id",
 * "problem"}; exits 0 when the chain is intact, 1 when it was tampered with,
 * 2 on bad settings or when Redis could not be read. */
#include "common/config.h"
#include "common/log.h"
#include "common/redis.h"
#include "projections/audit.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static char *g_redis_url;
static int64_t g_timeout_ms;

static const cm_opt k_opts[] = {
    {"redis-url", "REDIS_URL", CM_OPT_STR, &g_redis_url, "redis://127.0.0.1:6379/0", 0, -1, "Redis to use"},
    {"redis-timeout-ms", "REDIS_TIMEOUT_MS", CM_OPT_INT, &g_timeout_ms, "30000", 100, 600000,
     "connect/command timeout"},
    {NULL, NULL, 0, NULL, NULL, 0, 0, NULL},
};

int main(int argc, char **argv)
{
    cm_log_init("audit-verify");
    char err[512];
    int lr = cm_config_load(k_opts, argc, argv, err, sizeof err);
    if (lr != 0) {
        if (lr < 0)
            fprintf(stderr, "chorus-audit-verify: %s\n", err);
        cm_config_free(k_opts);
        return lr < 0 ? 2 : 0;
    }
    int code = 2;
    redisContext *c = cm_redis_connect(g_redis_url, (int)g_timeout_ms, err, sizeof err);
    if (!c) {
        cm_log(CM_ERROR, "%s", err);
        goto out;
    }
    pj_audit_report rep;
    if (pj_audit_verify(c, &rep, err, sizeof err) != 0) {
        cm_log(CM_ERROR, "cannot verify the audit log: %s", err);
    } else {
        char json[512];
        pj_audit_report_json(&rep, json, sizeof json);
        printf("%s\n", json);
        code = rep.intact ? 0 : 1;
    }
    redisFree(c);
out:
    cm_config_free(k_opts);
    return code;
}
