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
#include <sys/resource.h>
#include <unistd.h>

api_cfg g_api;

static const cm_opt k_opts[] = {
    {"port", "API_PORT", CM_OPT_INT, &g_api.port, "8080", 1, 65535, "HTTP port"},
    {"redis-url", "REDIS_URL", CM_OPT_STR, &g_api.redis_url, "redis://127.0.0.1:6379/0", 1, 0,
     "Redis to use"},
    {"bus-stream", "BUS_STREAM", CM_OPT_STR, &g_api.bus, CM_BUS_STREAM_DEFAULT, 1, 0, "the bus stream"},
    {"admin-token", "CHORUS_ADMIN_TOKEN", CM_OPT_STR, &g_api.admin_token, NULL, 1, 0,
     "bearer token of the admin routes (unset: admin disabled)"},
    {"threads", "API_THREADS", CM_OPT_INT, &g_api.threads, "2", 1, 256, "HTTP threads, each with its Redis connection"},
    {"redis-timeout-ms", "REDIS_TIMEOUT_MS", CM_OPT_INT, &g_api.redis_timeout_ms, "2000", 10, 600000,
     "connect and command timeout"},
    {"conn-timeout-s", "API_CONN_TIMEOUT_S", CM_OPT_INT, &g_api.conn_timeout_s, "30", 1, 3600,
     "idle/slow client connections are closed after this"},
    {"max-conns", "API_MAX_CONNS", CM_OPT_INT, &g_api.max_conns, "4096", 16, 1000000,
     "concurrent client connections"},
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
    if (api_waiters_start(err, sizeof err) != 0) {
        cm_log(CM_ERROR, "%s", err);
        goto out;
    }
    if (api_batch_start(err, sizeof err) != 0) {
        cm_log(CM_ERROR, "%s", err);
        api_waiters_stop();
        goto out;
    }
    d = api_server_start(err, sizeof err);
    if (!d) {
        cm_log(CM_ERROR, "%s", err);
        api_batch_stop();
        api_waiters_stop();
        goto out;
    }
    cm_log(CM_INFO, "listening on port %lld with %lld threads (redis %s, bus %s, admin %s)",
           (long long)g_api.port, (long long)g_api.threads, g_api.redis_url, g_api.bus,
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
    MHD_stop_daemon(d);
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    cm_log(CM_INFO, "stopped");
    exit_code = 0;
out:
    cm_config_free(k_opts);
    return exit_code;
}
