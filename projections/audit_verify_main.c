/* audit_verify_main.c - chorus-audit-verify: walks the hash-chained audit
 * log (pj_audit_verify) and reports the first bad record.
 *
 *   chorus-audit-verify [--redis-url=URL] [--deep] [--audit-head-file=PATH]
 *
 * The key comes from AUDIT_KEY or AUDIT_KEY_FILE (as for the audit worker);
 * without one the chain is verified as unkeyed. With AUDIT_HEAD_FILE, the
 * chain must reach and match that file's highest line (a Redis rolled back
 * is caught). With --deep, every record's digest, type and bus entry id are
 * checked against the event stored in its checkout's history.
 *
 * Prints one JSON line {"intact","count","unkeyed","anchored","deep",
 * "bad_position","bad_entry_id","bad_event_id","problem"}; exits 0 when the
 * chain is intact, 1 when it was tampered with, 2 on bad settings, a key that
 * does not fit the chain, or when Redis could not be read. */
#include "common/config.h"
#include "common/log.h"
#include "common/redis.h"
#include "projections/audit.h"

#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/names.h"

static char *g_redis_url, *g_key, *g_key_file, *g_head_file;
static int64_t g_timeout_ms, g_partitions;
static bool g_deep;

static const cm_opt k_opts[] = {
    {"redis-url", "REDIS_URL", CM_OPT_STR, &g_redis_url, "redis://127.0.0.1:6379/0", 0, -1, "Redis to use"},
    {"redis-timeout-ms", "REDIS_TIMEOUT_MS", CM_OPT_INT, &g_timeout_ms, "30000", 100, 600000,
     "connect/command timeout"},
    {"audit-key", "AUDIT_KEY", CM_OPT_STR, &g_key, NULL, 0, -1,
     "the chain's key, hex or base64, 32..64 bytes (prefer AUDIT_KEY_FILE)"},
    {"audit-key-file", "AUDIT_KEY_FILE", CM_OPT_STR, &g_key_file, NULL, 0, -1, "file holding the chain's key"},
    {"audit-head-file", "AUDIT_HEAD_FILE", CM_OPT_STR, &g_head_file, NULL, 0, -1,
     "the head file the audit workers append; the chain must reach and match its highest line"},
    {"partitions", "PARTITIONS", CM_OPT_INT, &g_partitions, "1", 1, CM_PARTITIONS_MAX,
     "partitions of the checkouts' keys (--deep reads histories)"},
    {"deep", NULL, CM_OPT_BOOL, &g_deep, "false", 0, -1, "also check each record against its stored event"},
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
    redisContext *c = NULL;
    pj_audit_key key;
    pj_audit_anchor anchor = {0};
    if (cm_partitions_set(g_partitions) != 0) {   /* the range is checked by the table */
        fprintf(stderr, "chorus-audit-verify: PARTITIONS out of range\n");
        goto out;
    }
    if (pj_audit_key_load(g_key, g_key_file, &key, err, sizeof err) != 0) {
        fprintf(stderr, "chorus-audit-verify: %s\n", err);
        goto out;
    }
    if (g_head_file && *g_head_file && pj_audit_head_file_read(g_head_file, &anchor, err, sizeof err) != 0) {
        fprintf(stderr, "chorus-audit-verify: %s\n", err);
        goto out;
    }
    c = cm_redis_connect(g_redis_url, (int)g_timeout_ms, err, sizeof err);
    if (!c) {
        cm_log(CM_ERROR, "%s", err);
        goto out;
    }
    pj_audit_opts opts = {.key = &key, .anchor = g_head_file && *g_head_file ? &anchor : NULL, .deep = g_deep};
    pj_audit_report rep;
    if (pj_audit_verify(c, &opts, &rep, err, sizeof err) != 0) {
        cm_log(CM_ERROR, "cannot verify the audit log: %s", err);
    } else {
        char json[1024];
        pj_audit_report_json(&rep, json, sizeof json);
        printf("%s\n", json);
        code = rep.intact ? 0 : 1;
    }
out:
    if (c)
        redisFree(c);
    pj_audit_key_wipe(&key);
    if (g_key)
        sodium_memzero(g_key, strlen(g_key));
    cm_config_free(k_opts);
    return code;
}
