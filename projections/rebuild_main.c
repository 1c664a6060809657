/* rebuild_main.c - chorus-projection-rebuild: rebuilds the CQRS read models
 * from zero by replaying the bus (pj_projection_rebuild).
 *
 *   chorus-projection-rebuild [--redis-url=URL] [--bus=STREAM] [--read-model-ttl-s=N]
 *
 * Prints one JSON line with what it did; exits 0 on success, 1 when the
 * rebuild failed (the read models are then incomplete: run it again), 2 on
 * bad settings, 3 when another rebuild is running. */
#include "common/cluster.h"
#include "common/config.h"
#include "common/log.h"
#include "common/redis.h"
#include "projections/projection.h"

#include <stdint.h>
#include "common/names.h"

#include <stdio.h>
#include <stdlib.h>

static char *g_redis_url, *g_bus;
static int64_t g_timeout_ms, g_ttl_s, g_partitions;

static const cm_opt k_opts[] = {
    {"redis-url", "REDIS_URL", CM_OPT_STR, &g_redis_url, "redis://127.0.0.1:6379/0", 0, -1, "Redis to use"},
    {"bus", "BUS_STREAM", CM_OPT_STR, &g_bus, CM_BUS_STREAM_DEFAULT, 0, -1, "the bus stream"},
    {"redis-timeout-ms", "REDIS_TIMEOUT_MS", CM_OPT_INT, &g_timeout_ms, "30000", 100, 600000,
     "connect/command timeout"},
    {"read-model-ttl-s", "READ_MODEL_TTL_S", CM_OPT_INT, &g_ttl_s, PJ_READ_MODEL_TTL_DEFAULT, 0, 315360000,
     "lifetime of closed checkouts' read models and of client checkout indexes (0: kept); as the projection's"},
    {"partitions", "PARTITIONS", CM_OPT_INT, &g_partitions, "1", 1, CM_PARTITIONS_MAX, CM_PARTITIONS_HELP},
    {NULL, NULL, 0, NULL, NULL, 0, 0, NULL},
};

int main(int argc, char **argv)
{
    cm_log_init("projection-rebuild");
    char err[512];
    int lr = cm_config_load(k_opts, argc, argv, err, sizeof err);
    if (lr != 0) {
        if (lr < 0)
            fprintf(stderr, "chorus-projection-rebuild: %s\n", err);
        cm_config_free(k_opts);
        return lr < 0 ? 2 : 0;
    }
    int code = 1;
    if (cm_partitions_configure(g_partitions, g_bus, err, sizeof err) != 0) {
        fprintf(stderr, "chorus-projection-rebuild: %s\n", err);
        code = 2;
        goto out;
    }
    cm_cluster *cc = cm_cluster_open(g_redis_url, (int)g_timeout_ms, err, sizeof err);   /* redis:// or redis-cluster:// */
    if (!cc) {
        cm_log(CM_ERROR, "%s", err);
        goto out;
    }
    pj_rebuild_stats st;
    int rc = pj_projection_rebuild(cc, g_bus, g_ttl_s, &st, err, sizeof err);
    if (rc == PJ_OK) {
        printf("{\"rebuilt\":true,\"deleted_keys\":%lld,\"events\":%lld,\"applied\":%lld,\"undecodable\":%lld}\n",
               st.deleted, st.events, st.applied, st.undecodable);
        code = 0;
    } else {
        cm_log(CM_ERROR, "rebuild failed after %lld events: %s", st.events, err);
        code = rc == PJ_EBUSY ? 3 : 1;
    }
    cm_cluster_free(cc);
out:
    cm_config_free(k_opts);
    return code;
}
