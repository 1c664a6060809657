/* main.c - chorus-api: settings, start, and a clean stop on SIGTERM/SIGINT.
 *
 * Stop order matters: stop accepting (quiesce), answer every intake in the
 * batcher and wake every long-poll so no connection stays suspended
 * (libmicrohttpd refuses to stop with suspended connections), give in-flight
 * requests a moment, then stop the daemon. */
#include "api/api_int.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "common/names.h"

#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

api_cfg g_api;

static const cm_opt k_opts[] = {
    {"port", "API_PORT", CM_OPT_INT, &g_api.port, "8080", 1, 65535, "HTTP port"},
    {"redis-url", "REDIS_URL", CM_OPT_STR, &g_api.redis_url, "redis://127.0.0.1:6379/0", 1, 0,
     "Redis to use"},
    {"bus-stream", "BUS_STREAM", CM_OPT_STR, &g_api.bus, CM_BUS_STREAM_DEFAULT, 1, 0, "the bus stream"},
    {"partitions", "PARTITIONS", CM_OPT_INT, &g_api.partitions, "1", 1, CM_PARTITIONS_MAX, CM_PARTITIONS_HELP},
    {"admin-token", "CHORUS_ADMIN_TOKEN", CM_OPT_STR, &g_api.admin_token, NULL, 1, 0,
     "bearer token of the admin routes (unset: admin disabled)"},
    {"threads", "API_THREADS", CM_OPT_INT, &g_api.threads, "2", 1, 256,
     "HTTP threads, and as many Redis threads (each with its own connection) for the handlers that call Redis"},
    {"redis-timeout-ms", "REDIS_TIMEOUT_MS", CM_OPT_INT, &g_api.redis_timeout_ms, "1000", 10, 600000,
     "connect and command timeout: a Redis silent this long is unreachable (503 until the probe gets a PONG)"},
    {"redis-probe-ms", "API_REDIS_PROBE_MS", CM_OPT_INT, &g_api.probe_ms, "200", 10, 60000,
     "period of the Redis probe (PING) that notices a hung or lost Redis and its return"},
    {"conn-timeout-s", "API_CONN_TIMEOUT_S", CM_OPT_INT, &g_api.conn_timeout_s, "30", 1, 3600,
     "idle client connections (nothing sent or read) are closed after this"},
    {"request-timeout-s", "API_REQUEST_TIMEOUT_S", CM_OPT_INT, &g_api.request_timeout_s, "10", 1, 3600,
     "a request's headers and body must be in within this of the connection opening or its previous answer"},
    {"max-conns", "API_MAX_CONNS", CM_OPT_INT, &g_api.max_conns, "4096", 16, 1000000,
     "concurrent client connections in total"},
    {"max-conns-per-ip", "API_MAX_CONNS_PER_IP", CM_OPT_INT, &g_api.max_conns_per_ip, "256", 0, 1000000,
     "concurrent connections of one client address (0: no limit; set it above your proxy's pool)"},
    {"long-polls-max", "API_LONG_POLLS_MAX", CM_OPT_INT, &g_api.long_polls_max, "1024", 0, 1000000,
     "long-polls (?wait_ms) waiting at once; more are answered at once with the current state"},
    {"redis-wait-replicas", "REDIS_WAIT_REPLICAS", CM_OPT_INT, &g_api.wait_replicas, "0", 0, 16,
     "a 202 waits until this many replicas have the checkout (WAIT); 0 = off (README \"Durability\")"},
    {"redis-wait-timeout-ms", "REDIS_WAIT_TIMEOUT_MS", CM_OPT_INT, &g_api.wait_timeout_ms, "500", 1, 600000,
     "how long a WAIT may take; replicas short of REDIS_WAIT_REPLICAS by then: 503 (below REDIS_TIMEOUT_MS)"},
    {NULL, NULL, 0, NULL, NULL, 0, 0, NULL},
};

/* Lets max_conns sockets be open: raise the soft descriptor limit. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)g_api.max_conns + 64;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            cm_log(CM_WARN, "cannot raise the open-files limit");
    }
}

/* Settings that a range cannot check. Returns 0 or -1 with one line in err
 * (naming the setting, never showing a secret). */
static int check_settings(char *err, size_t errlen)
{
    size_t tok = g_api.admin_token ? strlen(g_api.admin_token) : 0;
    if (tok > 0 && tok < API_ADMIN_TOKEN_MIN) {
        snprintf(err, errlen,
                 "CHORUS_ADMIN_TOKEN is %zu bytes; it must be at least %d (or unset, which disables the admin routes)",
                 tok, API_ADMIN_TOKEN_MIN);
        return -1;
    }
    if (cm_partitions_configure(g_api.partitions, g_api.bus, err, errlen) != 0)
        return -1;
    cm_redis_url u;
    if (cm_redis_url_parse(g_api.redis_url, &u, err, errlen) != 0)
        return -1;   /* the message shows the URL masked */
    if (u.cluster && g_api.partitions < 2) {
        /* without partition tags a checkout's history, idempotency record and
         * bus are in different slots: no intake could be one script */
        snprintf(err, errlen, "REDIS_URL is a Redis Cluster (redis-cluster://): PARTITIONS must be 2 or more "
                 "(it is %lld), so that each checkout's keys share one slot", (long long)g_api.partitions);
        return -1;
    }
    if (g_api.wait_replicas > 0 && g_api.wait_timeout_ms >= g_api.redis_timeout_ms) {
        snprintf(err, errlen, "REDIS_WAIT_TIMEOUT_MS (%lld) must be below REDIS_TIMEOUT_MS (%lld): a WAIT "
                 "blocks the connection that long", (long long)g_api.wait_timeout_ms,
                 (long long)g_api.redis_timeout_ms);
        return -1;
    }
    if (g_api.max_conns_per_ip > g_api.max_conns) {
        snprintf(err, errlen, "API_MAX_CONNS_PER_IP (%lld) is above API_MAX_CONNS (%lld)",
                 (long long)g_api.max_conns_per_ip, (long long)g_api.max_conns);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    cm_log_init("api");
    char err[512];
    int rc = cm_config_load(k_opts, argc, argv, err, sizeof err);
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "chorus-api: %s\n", err);
        cm_config_free(k_opts);
        return rc < 0 ? 2 : 0;
    }
    if (check_settings(err, sizeof err) != 0) {
        fprintf(stderr, "chorus-api: %s\n", err);
        cm_config_free(k_opts);
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "chorus-api: libsodium failed to initialise\n");
        cm_config_free(k_opts);
        return 1;
    }
    raise_nofile();

    /* Signals are taken by sigwait below; every thread inherits the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    int exit_code = 1;
    struct MHD_Daemon *d = NULL;
    if (api_redis_probe_start(err, sizeof err) != 0) {
        cm_log(CM_ERROR, "%s", err);
        goto out;
    }
    if (api_waiters_start(err, sizeof err) != 0) {
        cm_log(CM_ERROR, "%s", err);
        goto stop_probe;
    }
    if (api_batch_start(err, sizeof err) != 0) {
        cm_log(CM_ERROR, "%s", err);
        goto stop_waiters;
    }
    d = api_server_start(err, sizeof err);
    if (!d) {
        cm_log(CM_ERROR, "%s", err);
        goto stop_batch;
    }
    char url[512];
    cm_redis_url_mask(g_api.redis_url, url, sizeof url);
    cm_log(CM_INFO, "listening on port %lld with %lld threads (redis %s, bus %s, admin %s)",
           (long long)g_api.port, (long long)g_api.threads, url, g_api.bus,
           g_api.admin_token && *g_api.admin_token ? "enabled" : "disabled");

    int sig = 0;
    sigwait(&set, &sig);
    cm_log(CM_INFO, "signal %d: draining", sig);
    MHD_socket ls = MHD_quiesce_daemon(d);
    api_batch_stop();
    api_waiters_stop();
    int64_t until = cm_mono_ms() + 1000;
    while (cm_mono_ms() < until) {
        const union MHD_DaemonInfo *i = MHD_get_daemon_info(d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        if (!i || i->num_connections == 0)
            break;
        cm_sleep_ms(10);
    }
    api_server_stop(d);
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    api_redis_probe_stop();
    cm_log(CM_INFO, "stopped");
    exit_code = 0;
    goto out;
stop_batch:
    api_batch_stop();
stop_waiters:
    api_waiters_stop();
stop_probe:
    api_redis_probe_stop();
out:
    cm_config_free(k_opts);
    return exit_code;
}
