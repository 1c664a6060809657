/* soak.c - chorus-soak: the platform under mixed load, fuzzing and worker
 * kills for a number of minutes, then a count of what went wrong.
 *
 * Usage: chorus-soak [minutes]   (default 10; `./chorus soak` runs it)
 *
 * Starts a private platform as bench_e2e.c does: a redis-server (AOF,
 * appendfsync always, as under `./chorus up`), chorus-api and the six
 * workers as real processes found beside this binary, each worker with a
 * stable CONSUMER_NAME. Then, for the whole run, at once:
 *
 *   checkouts   open loop, SOAK_CHECKOUT_RATE (50)/s, 1 in 10 for a product
 *               out of stock (a failed saga); every 202's checkout_id is kept;
 *   long-polls  open loop, 50/s, GET /api/checkouts/<a recent id>?wait_ms=..;
 *   fuzz        open loop over SOAK_CONNS (64) keep-alive connections
 *               (requests from bench/fuzzgen.c):
 *               SOAK_FUZZ_PER_MIN (100,000) requests a minute, i.e. 1,000,000
 *               in 10 minutes, each generated from (seed, its number) so a
 *               bad answer can be printed again: odd methods, routes with
 *               random segments and query strings, junk headers, mutated
 *               JSON bodies (truncated, bytes flipped, odd values, deep
 *               nesting, random bytes); all framed by Content-Length;
 *   raw         one thread on its own sockets: random bytes, broken framing
 *               and slow senders that stop mid-header;
 *   kills       every SOAK_KILL_EVERY_MS (3000) one worker, in turn, gets
 *               SIGKILL and is started again at once.
 *
 * Meanwhile every child is watched: one that ends by itself (a signal we did
 * not send, or any exit) is a crash, is reported with its log, and is started
 * again. Resident memory of every process is sampled each second.
 *
 * Afterwards: every checkout answered 202 must reach exactly one terminal
 * event in the event store (GET /api/event-store/replay/checkout/<id>,
 * polled for up to SOAK_SETTLE_S (120) s); then every process gets SIGTERM
 * and must exit 0, and no log may hold a sanitizer report.
 *
 * Figures (BENCH soak.*): requests (all of them), fuzz_requests, checkouts,
 * longpolls, raw_requests, worker_kills, answers_503, transport_errors,
 * and the must-be-zero ones: crashes, http_5xx_not_503, lost_sagas,
 * duplicate_terminals; rss_growth_<process> (MiB, mean of the last minute
 * minus mean of the first; workers restart after each kill, so theirs
 * is the copy alive at the time). Exit 1 when a must-be-zero figure is not
 * zero or the soak could not run, else 0.
 *
 * Knobs: SOAK_CHECKOUT_RATE, SOAK_FUZZ_PER_MIN, SOAK_CONNS, SOAK_KILL_EVERY_MS,
 * SOAK_SETTLE_S, SOAK_SEED (the fuzz seed, printed). */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/benchutil.h"
#include "bench/fuzzgen.h"
#include "bench/httpload.h"
#include "common/clock.h"
#include "common/names.h"
#include "common/redis.h"
#include "tests/support/http.h"
#include "tests/support/proc.h"
#include "tests/support/redis_fixture.h"

#define NPROC (1 + CM_W_COUNT)      /* chorus-api, then the workers */
#define ADMIN_TOKEN "soak-admin-token-0123456789abcdef"
#define ID_LEN 40
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static void figure(const char *name, double v, const char *unit)
{
    if (v == (double)(long long)v)
        printf("BENCH soak.%s %lld %s\n", name, (long long)v, unit);
    else
        printf("BENCH soak.%s %.2f %s\n", name, v, unit);
    fflush(stdout);
}

static long env_long(const char *name, long dflt, long lo, long hi)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < lo || n > hi) {
        fprintf(stderr, "soak: %s must be a whole number from %ld to %ld, not '%s'\n", name, lo, hi, v);
        exit(1);
    }
    return n;
}

/* ---- counters shared by the load threads ---- */

static atomic_uint_fast64_t g_5xx, g_503, g_raw_requests;
static atomic_int g_5xx_shown;
static uint64_t g_seed;
static int g_port;

/* Prints one bad answer (the first few only). */
static void show_5xx(const char *who, int status, const char *req, size_t req_len, const char *body, size_t blen)
{
    if (atomic_fetch_add(&g_5xx_shown, 1) >= 5)
        return;
    fprintf(stderr, "soak: %s answered %d (SOAK_SEED=%llu): %.*s\n--- request ---\n%.*s\n---\n", who, status,
            (unsigned long long)g_seed, (int)(blen > 300 ? 300 : blen), body ? body : "",
            (int)(req_len > 400 ? 400 : req_len), req ? req : "");
}

/* Counts one HTTP status; true if it is a 5xx other than 503. */
static bool count_status(int status)
{
    if (status == 503) {
        atomic_fetch_add(&g_503, 1);
        return false;
    }
    if (status >= 500) {
        atomic_fetch_add(&g_5xx, 1);
        return true;
    }
    return false;
}

/* ---- accepted checkouts ---- */

static pthread_mutex_t g_acc_lock = PTHREAD_MUTEX_INITIALIZER;
static char (*g_acc)[ID_LEN];      /* checkout ids answered 202, in order */
static size_t g_nacc, g_acc_cap;

static void accepted_add(const char *id, size_t len)
{
    if (len == 0 || len >= ID_LEN)
        return;
    pthread_mutex_lock(&g_acc_lock);
    if (g_nacc == g_acc_cap) {
        g_acc_cap = g_acc_cap ? g_acc_cap * 2 : 4096;
        g_acc = realloc(g_acc, g_acc_cap * sizeof *g_acc);
        if (!g_acc)
            abort();
    }
    memcpy(g_acc[g_nacc], id, len);
    g_acc[g_nacc][len] = '\0';
    g_nacc++;
    pthread_mutex_unlock(&g_acc_lock);
}

/* Copies one of the last 64 accepted ids into out; false when none yet. */
static bool accepted_recent(uint64_t pick, char out[ID_LEN])
{
    pthread_mutex_lock(&g_acc_lock);
    bool ok = g_nacc > 0;
    if (ok) {
        size_t back = (size_t)(pick % (g_nacc < 64 ? g_nacc : 64));
        memcpy(out, g_acc[g_nacc - 1 - back], ID_LEN);
    }
    pthread_mutex_unlock(&g_acc_lock);
    return ok;
}

static size_t accepted_count(void)
{
    pthread_mutex_lock(&g_acc_lock);
    size_t n = g_nacc;
    pthread_mutex_unlock(&g_acc_lock);
    return n;
}

/* The string value of "key":"..." in body (len bytes), or NULL. */
static const char *json_field(const char *body, size_t len, const char *key, size_t *vlen)
{
    size_t kl = strlen(key);
    for (const char *p = body; p && (size_t)(p - body) + kl + 3 < len; p = memchr(p + 1, '"', len - (size_t)(p - body) - 1)) {
        if (*p == '"' && !memcmp(p + 1, key, kl) && p[1 + kl] == '"' && p[2 + kl] == ':' && p[3 + kl] == '"') {
            const char *v = p + kl + 4, *e = memchr(v, '"', len - (size_t)(v - body));
            if (!e)
                return NULL;
            *vlen = (size_t)(e - v);
            return v;
        }
    }
    return NULL;
}

/* ---- checkouts ---- */

static size_t build_checkout(void *ud, uint64_t seq, char *buf, size_t cap)
{
    (void)ud;
    char body[160];
    int bl = snprintf(body, sizeof body, "{\"client_id\":\"soak-%llu\",\"items\":[{\"product_id\":\"%s\",\"quantity\":1}]}",
                      (unsigned long long)(seq % 1000), seq % 10 == 3 ? "soak-none" : "soak-ok");
    int w = snprintf(buf, cap,
                     "POST /api/checkouts HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                     "Idempotency-Key: soak-%llu-%llu\r\nContent-Length: %d\r\n\r\n%s",
                     (unsigned long long)g_seed, (unsigned long long)seq, bl, body);
    return w > 0 && (size_t)w < cap ? (size_t)w : 0;
}

static atomic_uint_fast64_t g_checkout_other;

static void on_checkout(void *ud, const hl_answer *a)
{
    (void)ud;
    if (a->status == 202) {
        size_t l = 0;
        const char *id = json_field(a->body, a->body_len, "checkout_id", &l);
        if (id)
            accepted_add(id, l);
        else
            atomic_fetch_add(&g_checkout_other, 1);
        return;
    }
    if (count_status(a->status))
        show_5xx("POST /api/checkouts", a->status, NULL, 0, a->body, a->body_len);
    else if (a->status != 503)
        atomic_fetch_add(&g_checkout_other, 1);
}

/* ---- long-polls ---- */

static size_t build_longpoll(void *ud, uint64_t seq, char *buf, size_t cap)
{
    (void)ud;
    char id[ID_LEN];
    int w;
    if (accepted_recent(seq * 2654435761u, id))
        w = snprintf(buf, cap, "GET /api/checkouts/%s?wait_ms=%llu HTTP/1.1\r\nHost: soak\r\n\r\n", id,
                     (unsigned long long)(seq * 7919 % 3000));
    else
        w = snprintf(buf, cap, "GET /health HTTP/1.1\r\nHost: soak\r\n\r\n");
    return w > 0 && (size_t)w < cap ? (size_t)w : 0;
}

static void on_longpoll(void *ud, const hl_answer *a)
{
    (void)ud;
    if (count_status(a->status))
        show_5xx("GET /api/checkouts/<id>?wait_ms", a->status, NULL, 0, a->body, a->body_len);
}

static size_t build_fuzz(void *ud, uint64_t seq, char *buf, size_t cap)
{
    (void)ud;
    return fz_request(g_seed, seq, ADMIN_TOKEN, buf, cap);
}

static void on_fuzz(void *ud, const hl_answer *a)
{
    (void)ud;
    if (count_status(a->status)) {
        char *req = malloc(FZ_MAX_REQUEST);
        size_t n = req ? fz_request(g_seed, a->seq, ADMIN_TOKEN, req, FZ_MAX_REQUEST) : 0;
        show_5xx("a fuzz request", a->status, req, n, a->body, a->body_len);
        free(req);
    }
}

/* ---- raw sockets: what httpload cannot frame ---- */

#define SLOW_HELD 16

typedef struct raw_args {
    int64_t end_ms;
} raw_args;

static void *raw_main(void *arg)
{
    const raw_args *ra = arg;
    fz_gen g = {.s = g_seed * 31 + 7};
    tf_http slow[SLOW_HELD];
    int64_t slow_at[SLOW_HELD];
    memset(slow, 0, sizeof slow);
    for (int i = 0; i < SLOW_HELD; i++) {
        slow[i].fd = -1;
        slow_at[i] = 0;
    }
    char buf[4096];
    for (uint64_t n = 0; cm_mono_ms() < ra->end_ms; n++) {
        int mode = (int)fz_pick(&g, 4);
        if (mode == 0) {   /* a slow sender: half a header, held up to 3 s */
            int i = (int)(n % SLOW_HELD);
            tf_http_close(&slow[i]);
            if (tf_http_open(&slow[i], g_port, 1000) == 0) {
                static const char half[] = "GET /health HTTP/1.1\r\nHost: soak\r\nX-Slow: aaaa";
                if (tf_http_send_raw(&slow[i], half, sizeof half - 1, 1000) != 0)
                    tf_http_close(&slow[i]);
                slow_at[i] = cm_mono_ms();
            }
        } else {
            size_t len = 0;
            if (mode == 1) {   /* random bytes, then an end of headers */
                for (size_t k = 0, m = fz_pick(&g, 2000); k < m; k++)
                    buf[len++] = (char)fz_rnd(&g);
            } else if (mode == 2) {   /* broken framing */
                static const char *const framing[] = {
                    "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n",
                    "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n",
                    "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n",
                    "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n",
                    "GET /health HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n", "GET /health HTTP/1.1\r\nNoColon\r\n",
                    "GET /health\r\n"};
                len = (size_t)snprintf(buf, sizeof buf, "%s", framing[fz_pick(&g, ARRAY_LEN(framing))]);
            } else {   /* a header line of binary bytes */
                len = (size_t)snprintf(buf, sizeof buf, "GET /api/products HTTP/1.1\r\nHost: x\r\nX-Bin: ");
                for (size_t k = 0, m = fz_pick(&g, 200); k < m; k++)
                    buf[len++] = (char)(fz_rnd(&g) | 0x80);
                buf[len++] = '\r';
                buf[len++] = '\n';
            }
            memcpy(buf + len, "\r\n", 2);
            len += 2;
            tf_http h = {.fd = -1};
            if (tf_http_open(&h, g_port, 1000) == 0 && tf_http_send_raw(&h, buf, len, 1000) == 0) {
                tf_http_resp r;
                if (tf_http_read(&h, &r, false, 3000) == 0 && r.status != 505 && count_status(r.status))
                    show_5xx("a raw request", r.status, buf, len, r.body, r.body_len);
                tf_http_resp_free(&r);
            }
            tf_http_close(&h);
        }
        atomic_fetch_add(&g_raw_requests, 1);
        for (int i = 0; i < SLOW_HELD; i++)
            if (slow[i].fd >= 0 && cm_mono_ms() - slow_at[i] > 3000)
                tf_http_close(&slow[i]);
        cm_sleep_ms(10);
    }
    for (int i = 0; i < SLOW_HELD; i++)
        tf_http_close(&slow[i]);
    return NULL;
}

/* ---- load threads (httpload) ---- */

typedef struct load {
    const char *name;
    hl_config cfg;
    hl_result res;
    int rc;
    char err[256];
} load;

static void *load_main(void *arg)
{
    load *l = arg;
    l->rc = hl_run(&l->cfg, &l->res, l->err, sizeof l->err);
    return NULL;
}

/* ---- processes ---- */

static pid_t g_pids[NPROC];
static const char *g_names[NPROC];
static char g_logs[NPROC][400];
static char g_api_bin[PATH_MAX], g_wk_bin[PATH_MAX];
static const char *g_url;
static int g_claim_ms;

static pid_t spawn_proc(int i)
{
    char url_env[340], port_env[32], consumer_env[96], claim_env[48];
    snprintf(url_env, sizeof url_env, "REDIS_URL=%s", g_url);
    snprintf(port_env, sizeof port_env, "API_PORT=%d", g_port);
    snprintf(consumer_env, sizeof consumer_env, "CONSUMER_NAME=soak-%s", g_names[i]);
    snprintf(claim_env, sizeof claim_env, "CLAIM_IDLE_MS=%d", g_claim_ms);
    /* PARTITIONS=1 whatever the caller's environment says: the soak reads the
     * unpartitioned bus and key names */
    const char *env[] = {url_env, port_env, "PARTITIONS=1", "METRICS_PORT=0", "LOG_LEVEL=warn",
                         "CHORUS_ADMIN_TOKEN=" ADMIN_TOKEN, consumer_env, claim_env, NULL};
    const char *api_av[] = {g_api_bin, NULL};
    const char *wk_av[] = {g_wk_bin, g_names[i], NULL};
    return tf_spawn(i == 0 ? api_av : wk_av, env, g_logs[i]);
}

static pid_t start_api(void *ud)
{
    (void)ud;
    return spawn_proc(0);
}

static bool api_ready(void *ud)
{
    (void)ud;
    tf_http_resp r;
    bool ok = tf_http_request(g_port, "GET", "/ready", NULL, NULL, &r) == 0 && r.status == 200;
    tf_http_resp_free(&r);
    return ok;
}

static int g_crashes;

/* Reaps children that ended by themselves: each is a crash; it is started
 * again so the soak goes on. */
static void watch_children(void)
{
    for (int i = 0; i < NPROC; i++) {
        int st;
        if (g_pids[i] <= 0 || waitpid(g_pids[i], &st, WNOHANG) != g_pids[i])
            continue;
        g_crashes++;
        if (WIFSIGNALED(st))
            fprintf(stderr, "soak: CRASH: %s (pid %d) died by signal %d\n", g_names[i], (int)g_pids[i], WTERMSIG(st));
        else
            fprintf(stderr, "soak: CRASH: %s (pid %d) exited %d by itself\n", g_names[i], (int)g_pids[i],
                    WEXITSTATUS(st));
        tf_dump_file(g_logs[i], g_names[i]);
        g_pids[i] = spawn_proc(i);
    }
}

/* Counts sanitizer reports in a log. */
static int sanitizer_reports(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, "ERROR: AddressSanitizer") || strstr(line, "ERROR: LeakSanitizer") ||
             strstr(line, "runtime error:");
    fclose(f);
    return n;
}

/* ---- the end: every 202 has exactly one terminal event ---- */

/* Terminal events in the checkout's history: -1 when the store does not
 * know it (404), -2 when the answer could not be read (try again). */
static int terminals_of(tf_http *h, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/api/event-store/replay/checkout/%s", id);
    tf_http_resp r;
    int n = -2;
    if (h->fd < 0 && tf_http_open(h, g_port, 2000) != 0)
        return -2;
    if (tf_http_do(h, "GET", path, NULL, NULL, 0, &r, 10000) != 0) {
        tf_http_resp_free(&r);
        tf_http_close(h);
        return -2;
    }
    if (r.status == 404) {
        n = -1;
    } else if (r.status == 200) {
        json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
        json_t *evs = json_object_get(j, "events");
        if (json_is_array(evs)) {
            n = 0;
            size_t k;
            json_t *e;
            json_array_foreach(evs, k, e) {
                const char *t = json_string_value(json_object_get(e, "type"));
                n += t && (!strcmp(t, cm_event_type_names[CM_EV_CHECKOUT_SUCCEEDED]) ||
                           !strcmp(t, cm_event_type_names[CM_EV_CHECKOUT_FAILED]));
            }
        }
        json_decref(j);
    }
    if (r.closed)
        tf_http_close(h);
    tf_http_resp_free(&r);
    return n;
}

/* ---- main ---- */

#define SAMPLE_MS 1000

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    long minutes = 10;
    if (argc > 2 || (argc == 2 && (sscanf(argv[1], "%ld", &minutes) != 1 || minutes < 1 || minutes > 1440))) {
        fprintf(stderr, "usage: chorus-soak [minutes]   (1..1440, default 10)\n");
        return 1;
    }
    long checkout_rate = env_long("SOAK_CHECKOUT_RATE", 50, 1, 100000);
    long fuzz_per_min = env_long("SOAK_FUZZ_PER_MIN", 100000, 0, 100000000);
    int conns = (int)env_long("SOAK_CONNS", 64, 1, 10000);
    long kill_every = env_long("SOAK_KILL_EVERY_MS", 3000, 0, 3600000);
    long settle_s = env_long("SOAK_SETTLE_S", 120, 1, 3600);
    g_claim_ms = (int)env_long("SOAK_CLAIM_IDLE_MS", 5000, 100, 86400000);
    g_seed = (uint64_t)env_long("SOAK_SEED", (long)(time(NULL) & 0x7fffffff), 1, LONG_MAX);
    if (bu_bin_path("../api/chorus-api", g_api_bin, sizeof g_api_bin) != 0 ||
        bu_bin_path("../workers/chorus-worker", g_wk_bin, sizeof g_wk_bin) != 0) {
        fprintf(stderr, "soak: chorus-api or chorus-worker not built beside this binary\n");
        return 1;
    }

    tf_redis rs;
    if (tf_redis_start(&rs, "appendonly yes\nappendfsync always\n") != 0) {
        fprintf(stderr, "soak: cannot start redis-server\n");
        return 1;
    }
    g_url = rs.url;
    int rc = 1;
    redisContext *c = tf_redis_connect(&rs);
    const char *products[2] = {"soak-ok", "soak-none"};
    for (int i = 0; i < 2; i++) {
        freeReplyObject(redisCommand(c, "HSET " CM_KEY_PREFIX "product:%s name %s price_cents 100 available %s "
                                        "reserved 0 sold 0", products[i], products[i], i ? "0" : "1000000000"));
        freeReplyObject(redisCommand(c, "SADD " CM_KEY_PREFIX "products %s", products[i]));
    }

    g_names[0] = "chorus-api";
    for (int w = 0; w < CM_W_COUNT; w++)
        g_names[1 + w] = cm_worker_names[w];
    for (int i = 0; i < NPROC; i++)
        snprintf(g_logs[i], sizeof g_logs[i], "%s/%s.log", rs.dir, g_names[i]);
    for (int i = 1; i < NPROC; i++)
        if ((g_pids[i] = spawn_proc(i)) <= 0) {
            fprintf(stderr, "soak: cannot run %s: %s\n", g_wk_bin, strerror(errno));
            goto out;
        }
    g_pids[0] = bu_start_api(&g_port, start_api, api_ready, NULL, 15000);
    if (g_pids[0] < 0) {
        fprintf(stderr, "soak: cannot run %s: %s\n", g_api_bin, strerror(errno));
        g_pids[0] = 0;
        goto out;
    }
    if (!g_pids[0]) {
        tf_dump_file(g_logs[0], "chorus-api");
        goto out;
    }

    int64_t dur_ms = minutes * 60000;
    uint64_t fuzz_total = (uint64_t)fuzz_per_min * (uint64_t)minutes;
    printf("  soak: %ld min; redis-server %s (AOF always), chorus-api on :%d, six workers; %d CPUs\n"
           "  load: %ld checkouts/s, 50 long-polls/s, %llu fuzzed requests over %d connections (SOAK_SEED=%llu),\n"
           "  raw garbage and slow senders, one worker SIGKILLed every %ld ms (CLAIM_IDLE_MS %d)\n",
           minutes, rs.url, g_port, (int)sysconf(_SC_NPROCESSORS_ONLN), checkout_rate,
           (unsigned long long)fuzz_total, conns, (unsigned long long)g_seed, kill_every, g_claim_ms);

    load loads[3] = {
        {.name = "checkouts", .cfg = {.conns = 16, .rate = (double)checkout_rate, .build = build_checkout,
                                      .on_answer = on_checkout, .expect_status = 202, .resend_unanswered = true}},
        {.name = "long-polls", .cfg = {.conns = 64, .rate = 50, .build = build_longpoll, .on_answer = on_longpoll,
                                       .timeout_ms = 40000, .resend_unanswered = true}},
        {.name = "fuzz", .cfg = {.conns = conns, .rate = (double)fuzz_total / ((double)dur_ms / 1000.0),
                                 .build = build_fuzz, .on_answer = on_fuzz, .max_request = FZ_MAX_REQUEST}},
    };
    int nloads = fuzz_total ? 3 : 2;
    pthread_t threads[3], raw_thread;
    raw_args ra = {.end_ms = cm_mono_ms() + dur_ms};
    int started = 0;
    for (int i = 0; i < nloads; i++) {
        loads[i].cfg.port = g_port;
        loads[i].cfg.duration_ms = dur_ms;
        if (pthread_create(&threads[i], NULL, load_main, &loads[i]) != 0)
            break;
        started++;
    }
    bool raw_on = pthread_create(&raw_thread, NULL, raw_main, &ra) == 0;

    /* supervise: kills, crashes, memory samples */
    size_t nsamples = (size_t)(dur_ms / SAMPLE_MS) + 2, ns = 0;
    double *rss = calloc(nsamples * (NPROC + 1), sizeof *rss);
    int kills = 0, victim = 0;
    int64_t t0 = cm_mono_ms(), next_kill = t0 + kill_every, next_sample = t0, next_report = t0 + 60000;
    while (cm_mono_ms() < t0 + dur_ms) {
        int64_t now = cm_mono_ms();
        watch_children();
        if (kill_every > 0 && now >= next_kill) {
            int i = 1 + victim++ % CM_W_COUNT;
            if (g_pids[i] > 0 && tf_kill(g_pids[i], SIGKILL) == 0) {
                int st = 0;
                if (tf_wait_exit(g_pids[i], 5000, &st) == 0) {
                    if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)) {   /* it ended before our kill */
                        g_crashes++;
                        fprintf(stderr, "soak: CRASH: %s ended (status %d) before its SIGKILL\n", g_names[i], st);
                    }
                    kills++;
                    g_pids[i] = spawn_proc(i);
                }
            }
            next_kill = now + kill_every;
        }
        if (now >= next_sample && ns < nsamples && rss) {
            for (int i = 0; i < NPROC; i++)
                rss[ns * (NPROC + 1) + i] = bu_rss_mib(g_pids[i]);
            rss[ns * (NPROC + 1) + NPROC] = bu_rss_mib(rs.server_pid);
            ns++;
            next_sample += SAMPLE_MS;
        }
        if (now >= next_report) {
            printf("  %lld min: %zu checkouts accepted, %d worker kills, %d crashes, %llu 5xx other than 503\n",
                   (long long)((now - t0) / 60000), accepted_count(), kills, g_crashes,
                   (unsigned long long)atomic_load(&g_5xx));
            next_report += 60000;
        }
        cm_sleep_ms(50);
    }
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    if (raw_on)
        pthread_join(raw_thread, NULL);
    watch_children();

    /* every 202 reaches exactly one terminal event */
    size_t nacc = accepted_count();   /* the load threads are done: g_acc no longer moves */
    uint8_t *done = calloc(nacc ? nacc : 1, 1);
    size_t lost = 0, dups = 0, unknown = 0, left = nacc;
    tf_http h = {.fd = -1};
    int64_t settle_end = cm_mono_ms() + settle_s * 1000;
    while (left > 0 && cm_mono_ms() < settle_end) {
        for (size_t k = 0; k < nacc && cm_mono_ms() < settle_end; k++) {
            if (done[k])
                continue;
            int t = terminals_of(&h, g_acc[k]);
            if (t == -1) {
                done[k] = 1;
                unknown++;
                left--;
                fprintf(stderr, "soak: checkout %s answered 202 but unknown to the event store\n", g_acc[k]);
            } else if (t >= 1) {
                done[k] = 1;
                dups += t > 1;
                left--;
            }
        }
        watch_children();
        if (left > 0)
            cm_sleep_ms(500);
    }
    tf_http_close(&h);
    lost = left + unknown;
    for (size_t k = 0, shown = 0; k < nacc && shown < 5; k++)
        if (!done[k]) {
            fprintf(stderr, "soak: checkout %s has no terminal event %ld s after the load stopped\n", g_acc[k], settle_s);
            shown++;
        }
    free(done);

    /* stop: SIGTERM, each must exit 0 */
    for (int i = 0; i < NPROC; i++)
        if (g_pids[i] > 0)
            tf_kill(g_pids[i], SIGTERM);
    for (int i = 0; i < NPROC; i++) {
        int st = 0;
        if (g_pids[i] <= 0)
            continue;
        if (tf_wait_exit(g_pids[i], 15000, &st) != 0) {
            fprintf(stderr, "soak: CRASH: %s did not stop within 15 s of SIGTERM\n", g_names[i]);
            g_crashes++;
            tf_kill(g_pids[i], SIGKILL);
            tf_wait_exit(g_pids[i], 5000, NULL);
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "soak: CRASH: %s ended with status %d on SIGTERM\n", g_names[i], st);
            g_crashes++;
            tf_dump_file(g_logs[i], g_names[i]);
        }
        g_pids[i] = 0;
    }
    for (int i = 0; i < NPROC; i++) {
        int n = sanitizer_reports(g_logs[i]);
        if (n) {
            fprintf(stderr, "soak: CRASH: %d sanitizer report(s) in %s\n", n, g_logs[i]);
            tf_dump_file(g_logs[i], g_names[i]);
            g_crashes += n;
        }
    }

    /* figures */
    uint64_t requests = 0, errors = 0;
    for (int i = 0; i < nloads; i++) {
        if (loads[i].rc != 0)
            fprintf(stderr, "soak: %s load: %s\n", loads[i].name, loads[i].err);
        requests += loads[i].res.sent;
        errors += loads[i].res.errors;
        printf("  %-10s sent %llu, answered %llu with the usual status and %llu otherwise, %llu transport errors, "
               "%llu never sent, %llu sent again (kept-alive connection closed unanswered); "
               "latency p50 %.2f ms p99 %.2f ms max %.1f ms\n",
               loads[i].name, (unsigned long long)loads[i].res.sent, (unsigned long long)loads[i].res.ok,
               (unsigned long long)loads[i].res.other_status, (unsigned long long)loads[i].res.errors,
               (unsigned long long)loads[i].res.unsent, (unsigned long long)loads[i].res.resent,
               hl_percentile_ms(&loads[i].res.lat, 0.5),
               hl_percentile_ms(&loads[i].res.lat, 0.99), (double)loads[i].res.lat.max_us / 1000.0);
    }
    uint64_t raw_n = atomic_load(&g_raw_requests);
    requests += raw_n;
    figure("minutes", (double)minutes, "min");
    figure("requests", (double)requests, "requests");
    figure("fuzz_requests", nloads > 2 ? (double)loads[2].res.sent : 0, "requests");
    figure("checkouts", (double)nacc, "accepted");
    figure("longpolls", (double)loads[1].res.sent, "requests");
    figure("raw_requests", (double)raw_n, "requests");
    figure("worker_kills", kills, "kills");
    figure("answers_503", (double)atomic_load(&g_503), "answers");
    figure("transport_errors", (double)errors, "requests");
    figure("crashes", g_crashes, "processes");
    figure("http_5xx_not_503", (double)atomic_load(&g_5xx), "answers");
    figure("lost_sagas", (double)lost, "sagas");
    figure("duplicate_terminals", (double)dups, "sagas");
    size_t win = ns < 60 ? ns : 60;
    for (int i = 0; i <= NPROC && rss && win > 0; i++) {
        double first = 0, last = 0;
        int nf = 0, nl = 0;
        for (size_t s = 0; s < win; s++) {
            double a = rss[s * (NPROC + 1) + i], b = rss[(ns - 1 - s) * (NPROC + 1) + i];
            if (a > 0) {
                first += a;
                nf++;
            }
            if (b > 0) {
                last += b;
                nl++;
            }
        }
        first = nf ? first / nf : 0;
        last = nl ? last / nl : 0;
        const char *name = i < NPROC ? g_names[i] : "redis-server";
        char fig[64];
        snprintf(fig, sizeof fig, "rss_growth_%s", name);
        for (char *p = fig; *p; p++)
            if (*p == '-')
                *p = '_';
        printf("  %-20s RSS first minute %.1f MiB, last minute %.1f MiB\n", name, first, last);
        figure(fig, last - first, "MiB");
    }
    free(rss);
    bool clean = g_crashes == 0 && atomic_load(&g_5xx) == 0 && lost == 0 && dups == 0;
    if (!clean)
        printf("soak: FAILED: %d crashes, %llu 5xx other than 503, %zu lost sagas, %zu with two terminal events\n",
               g_crashes, (unsigned long long)atomic_load(&g_5xx), lost, dups);
    rc = clean ? 0 : 1;
out:
    for (int i = 0; i < NPROC; i++)
        if (g_pids[i] > 0) {
            tf_kill(g_pids[i], SIGKILL);
            tf_wait_exit(g_pids[i], 5000, NULL);
        }
    redisFree(c);
    tf_redis_stop(&rs);
    free(g_acc);
    return rc;
}
