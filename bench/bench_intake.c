/* bench_intake.c - chorus-bench-intake: how many checkouts the API accepts
 * per second, and at what latency, with no worker running.
 *
 * Starts a private redis-server configured as `./chorus up` runs it (AOF,
 * fsync every second), a catalog of 16 products, and one chorus-api process
 * (API_THREADS from BENCH_API_THREADS, default 2; its request log on, at
 * LOG_LEVEL=info, into a file). Every request is a real checkout with its own
 * Idempotency-Key. Load comes from bench/httpload over loopback:
 *
 *   1. closed loop, BENCH_CONNS connections (default 64), 1 s warm-up + 5 s:
 *      the maximum rate of 202s -> intake.accepted_per_s;
 *   2. open loop at 5,000/s and at BENCH_RATE/s (default 10,000), 1 s
 *      warm-up + 5 s each; latency is taken from each request's scheduled
 *      send time (no coordinated omission) -> intake.p50_ms / intake.p99_ms
 *      at BENCH_RATE, and the same at 5,000/s;
 *   3. 5,000/s again while Redis rewrites its AOF (BGREWRITEAOF: a fork and
 *      a disk-bound child; automatic rewrites are off so that they do not
 *      land at random in the other phases) -> intake.p99_ms_at_5000_during_aof_rewrite;
 *   4. the raw ceiling: this process sends the intake's own Redis work (the
 *      product's price read, HMGET, then the intake script's EVALSHA with the
 *      arguments the API sends, formatted beforehand) pipelined 64 deep on
 *      one connection -> intake.raw_per_s
 *      and intake.vs_raw
 *      (accepted_per_s / raw_per_s).
 *
 * PARTITIONS (default 1) reaches the API, and the raw loop draws each
 * checkout id in its idempotency record's partition as the API does, so its
 * keys and bus are those of the partitioned platform.
 *
 * BENCH_REPLICA=1 adds a replica (`replicaof` the bench's server, AOF
 * everysec as well) before the run; with REDIS_WAIT_REPLICAS=1 in the
 * environment (it reaches the API) every batch of 202s then waits for it:
 * the cost of README "Durability".
 *
 * The API binary is found beside this one (../api/chorus-api) or named by
 * CHORUS_API_BIN. Exits non-zero only when it could not run. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bench/benchutil.h"
#include "api/lua/intake.h"
#include "bench/httpload.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/names.h"
#include "common/redis.h"
#include "event_store/store.h"
#include "tests/support/http.h"
#include "tests/support/proc.h"
#include "tests/support/redis_fixture.h"

#define NPRODUCTS 16
#define RAW_N 60000
#define RAW_DEPTH 64

extern const char api_lua_intake[];

static void figure(const char *name, double v, const char *unit)
{
    if (v >= 1000)
        printf("BENCH intake.%s %.0f %s\n", name, v, unit);
    else
        printf("BENCH intake.%s %.3f %s\n", name, v, unit);
    fflush(stdout);
}

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : dflt;
}

/* ---- the API process ---- */

static int api_bin(const char *argv0, char *out, size_t outlen)
{
    const char *env = getenv("CHORUS_API_BIN");
    if (env && *env) {
        snprintf(out, outlen, "%s", env);
        return access(out, X_OK);
    }
    (void)argv0;
    return bu_bin_path("../api/chorus-api", out, outlen);
}

static int g_port;

static bool api_up(void *ud)
{
    (void)ud;
    tf_http_resp r;
    bool ok = tf_http_request(g_port, "GET", "/health", NULL, NULL, &r) == 0 && r.status == 200;
    tf_http_resp_free(&r);
    return ok;
}



/* ---- requests ---- */

typedef struct phase {
    char tag[16];   /* makes idempotency keys unique across phases */
} phase;

static size_t build_checkout(void *ud, uint64_t seq, char *buf, size_t cap)
{
    const phase *ph = ud;
    char body[256];
    int bl = snprintf(body, sizeof body,
                      "{\"client_id\":\"bench-%llu\",\"items\":[{\"product_id\":\"p%llu\",\"quantity\":%llu}]}",
                      (unsigned long long)(seq % 1000), (unsigned long long)(seq % NPRODUCTS),
                      (unsigned long long)(1 + seq % 3));
    int n = snprintf(buf, cap,
                     "POST /api/checkouts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Idempotency-Key: %s-%llu\r\nContent-Length: %d\r\n\r\n%s",
                     ph->tag, (unsigned long long)seq, bl, body);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* The "some" stall total (microseconds) of /proc/pressure/<what>, or -1:
 * how long at least one task waited for the CPU (or for I/O). */
static double pressure_us(const char *what)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/pressure/%s", what);
    FILE *f = fopen(path, "r");
    double v = -1;
    if (f) {
        if (fgets(line, sizeof line, f) && !strncmp(line, "some", 4)) {
            const char *t = strstr(line, "total=");
            v = t ? atof(t + 6) : -1;
        }
        fclose(f);
    }
    return v;
}

/* Reads counter name from the API's /metrics (-1 when absent). */
static double metric(int port, const char *name)
{
    tf_http_resp r;
    double v = -1;
    if (tf_http_request(port, "GET", "/metrics", NULL, NULL, &r) == 0 && r.status == 200) {
        char pat[128];
        snprintf(pat, sizeof pat, "\n%s ", name);
        const char *m = strstr(r.body, pat);
        if (m)
            v = atof(m + strlen(pat));
    }
    tf_http_resp_free(&r);
    return v;
}

static int load(const char *tag, int port, int conns, double rate, hl_result *res)
{
    double b0 = metric(port, "intake_batches_total"), j0 = metric(port, "intake_batched_total");
    double cpu0 = pressure_us("cpu"), io0 = pressure_us("io");
    int64_t t0 = cm_mono_ns();
    phase ph;
    snprintf(ph.tag, sizeof ph.tag, "%s", tag);
    hl_config cfg = {.port = port, .conns = conns, .rate = rate, .warmup_ms = 1000, .duration_ms = 5000,
                     .timeout_ms = 10000, .expect_status = 202, .build = build_checkout, .ud = &ph,
                     .resend_unanswered = true};
    char err[256];
    if (hl_run(&cfg, res, err, sizeof err) != 0) {
        fprintf(stderr, "bench intake: %s\n", err);
        return -1;
    }
    printf("  %-14s %7.0f accepted/s  sent %llu  202 %llu  other %llu (last %d)  errors %llu  unsent %llu"
           "  resent %llu\n"
           "  %-14s latency ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
           tag, res->ok_per_s, (unsigned long long)res->sent, (unsigned long long)res->ok,
           (unsigned long long)res->other_status, res->last_other_status, (unsigned long long)res->errors,
           (unsigned long long)res->unsent, (unsigned long long)res->resent, "", hl_percentile_ms(&res->lat, 0.5), hl_percentile_ms(&res->lat, 0.9),
           hl_percentile_ms(&res->lat, 0.99), hl_percentile_ms(&res->lat, 0.999), (double)res->lat.max_us / 1000.0,
           hl_mean_ms(&res->lat));
    double b1 = metric(port, "intake_batches_total"), j1 = metric(port, "intake_batched_total");
    double wall_us = (double)(cm_mono_ns() - t0) / 1e3;
    if (b1 > b0)
        printf("  %-14s %.1f checkouts per pipelined Redis batch on average\n", "", (j1 - j0) / (b1 - b0));
    if (cpu0 >= 0 && io0 >= 0)
        printf("  %-14s machine pressure: some task waited for a CPU %.0f%% and for I/O %.0f%% of the time\n", "",
               100 * (pressure_us("cpu") - cpu0) / wall_us, 100 * (pressure_us("io") - io0) / wall_us);
    fflush(stdout);
    return 0;
}

/* ---- the raw ceiling ---- */

/* Formats one intake's Redis work (its product's price read, then the
 * intake script's EVALSHA with the arguments the API sends, built by the
 * same module: api/lua/intake.c) into *out (caller frees with free).
 * Returns its length, or -1. */
static long format_raw(const char *sha, uint64_t seq, char **out)
{
    char pid[16], id[CM_UUID_LEN + 1], client[32], key[32];
    snprintf(pid, sizeof pid, "p%llu", (unsigned long long)(seq % NPRODUCTS));
    snprintf(client, sizeof client, "bench-%llu", (unsigned long long)(seq % 1000));
    snprintf(key, sizeof key, "raw-%llu", (unsigned long long)seq);
    cm_partition_id(cm_partition_of_idem(client, key), id);   /* as the API draws it */
    api_intake_line line = {pid, (long long)(1 + seq % 3), 100 + (long long)(seq % NPRODUCTS)};
    api_intake_call call = {.checkout_id = id, .client_id = client, .idem_key = key,
                            .body_hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                            .answer = "c", .idem_ttl_s = 86400, .bus = CM_BUS_STREAM_DEFAULT,
                            .lines = &line, .n = 1};
    cm_argv args = {0}, a = {0};
    int nkeys = 0;
    long len = -1;
    if (api_intake_build(&call, &args, &nkeys) == 0) {
        cm_argv_adds(&a, "EVALSHA");
        cm_argv_adds(&a, sha);
        cm_argv_addll(&a, nkeys);
        for (int i = 0; i < args.n; i++)
            cm_argv_add(&a, args.v[i], args.len[i]);
        char *hm = NULL, *ev = NULL;
        int hl = redisFormatCommand(&hm, "HMGET %s price_cents", cm_key_product(pid).s);
        long el = redisFormatCommandArgv(&ev, a.n, (const char **)a.v, a.len);
        if (hl > 0 && el > 0 && (*out = malloc((size_t)hl + (size_t)el))) {
            memcpy(*out, hm, (size_t)hl);
            memcpy(*out + hl, ev, (size_t)el);
            len = hl + el;
        }
        redisFreeCommand(hm);
        redisFreeCommand(ev);
    }
    cm_argv_free(&args);
    cm_argv_free(&a);
    return len;
}

static int read_raw(redisContext *c)
{
    redisReply *r = NULL;
    if (redisGetReply(c, (void **)&r) != REDIS_OK)   /* the price */
        return -1;
    freeReplyObject(r);
    r = NULL;
    if (redisGetReply(c, (void **)&r) != REDIS_OK)
        return -1;
    const redisReply *st = cm_reply_elem(r, 0);
    bool bad = !cm_reply_is_str(st) || strcmp(st->str, "ok") != 0;
    if (bad)
        fprintf(stderr, "bench intake: raw: %s\n", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    freeReplyObject(r);
    return bad ? -1 : 0;
}

static double g_raw_redis_cpu_us;   /* Redis CPU per raw intake */

/* RAW_N intakes, formatted beforehand so that the client costs next to
 * nothing, pipelined RAW_DEPTH deep: the rate Redis itself can take. */
static double raw_rate(const tf_redis *rs)
{
    char err[256];
    redisContext *c = cm_redis_connect(rs->url, 10000, err, sizeof err);
    if (!c) {
        fprintf(stderr, "bench intake: %s\n", err);
        return -1;
    }
    double rate = -1;
    cm_script sc = {.src = api_lua_intake};
    char **cmds = calloc(RAW_N, sizeof *cmds);
    long *lens = calloc(RAW_N, sizeof *lens);
    if (!cmds || !lens || cm_script_load(c, &sc, err, sizeof err) != 0) {
        fprintf(stderr, "bench intake: %s\n", err);
        goto out;
    }
    for (size_t i = 0; i < RAW_N; i++)
        if ((lens[i] = format_raw(sc.sha, i, &cmds[i])) < 0)
            goto out;
    double cpu0 = bu_cpu_seconds(rs->server_pid);
    int64_t t0 = cm_mono_ns();
    size_t sent = 0, done = 0;
    while (done < RAW_N) {
        while (sent < RAW_N && sent - done < RAW_DEPTH) {
            redisAppendFormattedCommand(c, cmds[sent], (size_t)lens[sent]);
            sent++;
        }
        if (read_raw(c) != 0) {
            fprintf(stderr, "bench intake: raw loop failed: %s\n", c->errstr);
            goto out;
        }
        done++;
    }
    double secs = (double)(cm_mono_ns() - t0) / 1e9;
    g_raw_redis_cpu_us = (bu_cpu_seconds(rs->server_pid) - cpu0) / (double)RAW_N * 1e6;
    rate = (double)RAW_N / secs;
out:
    for (size_t i = 0; cmds && i < RAW_N; i++)
        free(cmds[i]);
    free(cmds);
    free(lens);
    redisFree(c);
    return rate;
}

int main(int argc, char **argv)
{
    (void)argc;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    char bin[PATH_MAX];
    if (api_bin(argv[0], bin, sizeof bin) != 0) {
        fprintf(stderr, "bench intake: no chorus-api at %s (build it, or set CHORUS_API_BIN)\n", bin);
        return 1;
    }
    long threads = env_long("BENCH_API_THREADS", 2), conns = env_long("BENCH_CONNS", 64);
    double rate = (double)env_long("BENCH_RATE", 10000);
    char perr[160];
    int parts = bu_partitions(1, perr, sizeof perr);
    if (parts < 0) {
        fprintf(stderr, "bench intake: %s\n", perr);
        return 1;
    }

    tf_redis rs;
    /* AOF with fsync every second, as `./chorus up` runs it; automatic AOF
     * rewrites are off so that a rewrite (a fork, then a disk-bound child
     * that can make Redis wait for fsync) does not land at random in the
     * phases: it is measured on purpose in a phase of its own. */
    if (tf_redis_start(&rs, "appendonly yes\nappendfsync everysec\nauto-aof-rewrite-percentage 0\n") != 0) {
        fprintf(stderr, "bench intake: cannot start redis-server\n");
        return 1;
    }
    int rc = 1;
    pid_t api = 0;
    redisContext *c = tf_redis_connect(&rs);
    tf_redis replica = {0};
    if (env_long("BENCH_REPLICA", 0) > 0) {
        char conf[160];
        snprintf(conf, sizeof conf, "replicaof 127.0.0.1 %d\nappendonly yes\nappendfsync everysec\n", rs.port);
        if (tf_redis_start(&replica, conf) != 0) {
            fprintf(stderr, "bench intake: cannot start the replica\n");
            goto out;
        }
        int64_t until = cm_mono_ms() + 10000;
        bool online = false;
        while (!online && cm_mono_ms() < until) {
            redisReply *ir = redisCommand(c, "INFO replication");
            online = ir && ir->type == REDIS_REPLY_STRING && strstr(ir->str, "state=online");
            freeReplyObject(ir);
            if (!online)
                cm_sleep_ms(20);
        }
        if (!online) {
            fprintf(stderr, "bench intake: the replica did not come online\n");
            goto out;
        }
        printf("  replica %s online; REDIS_WAIT_REPLICAS=%s\n", replica.url,
               getenv("REDIS_WAIT_REPLICAS") ? getenv("REDIS_WAIT_REPLICAS") : "0 (unset)");
    }
    for (int i = 0; i < NPRODUCTS; i++) {
        redisReply *r = redisCommand(c, "HSET " CM_KEY_PREFIX "product:p%d name p%d price_cents %d available "
                                        "1000000000 reserved 0 sold 0", i, i, 100 + i);
        freeReplyObject(r);
        r = redisCommand(c, "SADD " CM_KEY_PREFIX "products p%d", i);
        freeReplyObject(r);
    }

    char log[400], port_env[32], url_env[340], thr_env[32], parts_env[32];
    snprintf(log, sizeof log, "%s/api.log", rs.dir);
    for (int attempt = 0; attempt < 5 && !api; attempt++) {
        g_port = tf_free_port();
        snprintf(port_env, sizeof port_env, "API_PORT=%d", g_port);
        snprintf(url_env, sizeof url_env, "REDIS_URL=%s", rs.url);
        snprintf(thr_env, sizeof thr_env, "API_THREADS=%ld", threads);
        snprintf(parts_env, sizeof parts_env, "PARTITIONS=%d", parts);
        char log_env[64];
        snprintf(log_env, sizeof log_env, "LOG_LEVEL=%s", getenv("BENCH_LOG_LEVEL") ? getenv("BENCH_LOG_LEVEL") : "info");
        const char *env[] = {port_env, url_env, thr_env, parts_env, log_env, "CHORUS_ADMIN_TOKEN=", NULL};
        const char *av[] = {bin, NULL};
        api = tf_spawn(av, env, log);
        if (api <= 0) {
            fprintf(stderr, "bench intake: cannot run %s: %s\n", bin, strerror(errno));
            goto out;
        }
        if (!tf_wait_until(api_up, NULL, 10000)) {
            tf_kill(api, SIGKILL);
            tf_wait_exit(api, 5000, NULL);
            api = 0;
        }
    }
    if (!api) {
        tf_dump_file(log, "chorus-api log");
        goto out;
    }
    double loadavg[3] = {0, 0, 0};
    getloadavg(loadavg, 3);
    printf("  chorus-api (%ld threads, request log %s) on 127.0.0.1:%d; redis-server %s, AOF everysec; "
           "no workers; %d CPUs, load average %.2f before the run\n",
           threads, getenv("BENCH_LOG_LEVEL") ? "per BENCH_LOG_LEVEL" : "on", g_port, rs.url,
           (int)sysconf(_SC_NPROCESSORS_ONLN), loadavg[0]);
    if (parts > 1)
        printf("  PARTITIONS=%d: checkouts spread over the buses %s:{p0..p%d}\n", parts, CM_BUS_STREAM_DEFAULT,
               parts - 1);

    hl_result closed, r5k, rN;
    double api_cpu0 = bu_cpu_seconds(api), redis_cpu0 = bu_cpu_seconds(rs.server_pid), gen_cpu0 = bu_self_cpu();
    if (load("closed-loop", g_port, (int)conns, 0, &closed) != 0)
        goto out;
    double api_cpu = bu_cpu_seconds(api) - api_cpu0, redis_cpu = bu_cpu_seconds(rs.server_pid) - redis_cpu0;
    double gen_cpu = bu_self_cpu() - gen_cpu0;
    /* CPU includes the warm-up second: divide by everything answered */
    double answered = (double)closed.ok * 6.0 / 5.0;
    if (load("open-5000/s", g_port, (int)conns, 5000, &r5k) != 0 ||
        load(rate == 10000 ? "open-10000/s" : "open-rate", g_port, (int)conns, rate, &rN) != 0)
        goto out;
    /* the same 5,000/s while Redis rewrites its AOF (fork + disk) */
    hl_result rwr;
    redisReply *b = redisCommand(c, "BGREWRITEAOF");
    freeReplyObject(b);
    if (load("open-5000/s+rw", g_port, (int)conns, 5000, &rwr) != 0)
        goto out;
    double raw = raw_rate(&rs);
    if (raw <= 0)
        goto out;

    long long bus_len = 0;
    for (int p = 0; p < parts; p++) {
        redisReply *x = redisCommand(c, "XLEN %s", cm_key_bus(CM_BUS_STREAM_DEFAULT, p).s);
        bus_len = x && x->type == REDIS_REPLY_INTEGER && bus_len >= 0 ? bus_len + x->integer : -1;
        freeReplyObject(x);
    }
    if (parts == 1)
        printf("  bus holds %lld events (every 202 above, warm-ups and the raw loop's)\n", bus_len);
    else
        printf("  the %d partitions' buses hold %lld events (every 202 above, warm-ups and the raw loop's)\n", parts,
               bus_len);
    redisReply *x = redisCommand(c, "INFO persistence");
    if (x && x->type == REDIS_REPLY_STRING) {
        const char *rw = strstr(x->str, "aof_rewrites:");
        printf("  AOF rewrites during the run: %ld (each forks redis-server)\n", rw ? atol(rw + 13) : -1L);
    }
    freeReplyObject(x);
    FILE *lf = fopen(rs.logpath, "r");
    if (lf) {
        char line[512];
        int slow = 0;
        while (fgets(line, sizeof line, lf))
            slow += strstr(line, "fsync is taking too long") != NULL;
        fclose(lf);
        printf("  redis-server logged %d slow AOF fsyncs (it then holds writes, up to 2 s)\n", slow);
    }
    x = redisCommand(c, "INFO stats");
    if (x && x->type == REDIS_REPLY_STRING) {
        const char *fk = strstr(x->str, "latest_fork_usec:");
        printf("  latest fork took %.1f ms\n", fk ? atol(fk + 17) / 1000.0 : -1.0);
    }
    freeReplyObject(x);

    figure("accepted_per_s", closed.ok_per_s, "checkouts/s");
    figure("closed_p50_ms", hl_percentile_ms(&closed.lat, 0.5), "ms");
    figure("closed_p99_ms", hl_percentile_ms(&closed.lat, 0.99), "ms");
    figure("api_cpu_us_per_checkout", api_cpu / answered * 1e6, "us");
    figure("redis_cpu_us_per_checkout", redis_cpu / answered * 1e6, "us");
    figure("loadgen_cpu_us_per_request", gen_cpu / answered * 1e6, "us");
    figure("p50_ms_at_5000", hl_percentile_ms(&r5k.lat, 0.5), "ms");
    figure("p99_ms_at_5000", hl_percentile_ms(&r5k.lat, 0.99), "ms");
    figure("fixed_rate", rate, "req/s");
    figure("fixed_rate_accepted_per_s", rN.ok_per_s, "checkouts/s");
    figure("p50_ms", hl_percentile_ms(&rN.lat, 0.5), "ms");
    figure("p99_ms", hl_percentile_ms(&rN.lat, 0.99), "ms");
    figure("p999_ms", hl_percentile_ms(&rN.lat, 0.999), "ms");
    figure("p99_ms_at_5000_during_aof_rewrite", hl_percentile_ms(&rwr.lat, 0.99), "ms");
    figure("raw_per_s", raw, "intakes/s");
    figure("raw_redis_cpu_us_per_intake", g_raw_redis_cpu_us, "us");
    figure("vs_raw", closed.ok_per_s / raw, "ratio");
    rc = 0;
out:
    if (api > 0) {
        tf_kill(api, SIGTERM);
        if (tf_wait_exit(api, 10000, NULL) != 0) {
            tf_kill(api, SIGKILL);
            tf_wait_exit(api, 5000, NULL);
        }
    }
    redisFree(c);
    tf_redis_stop(&replica);
    tf_redis_stop(&rs);
    return rc;
}
