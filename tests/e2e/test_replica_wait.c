/* test_replica_wait.c - REDIS_WAIT_REPLICAS (issue 11 part 6): a real
 * master redis-server, a real replica (`replicaof`), a real chorus-api and a
 * real worker; the replica is frozen with SIGSTOP and thawed with SIGCONT.
 *
 *   accepted_*   with REDIS_WAIT_REPLICAS=1 every 202's checkout history is
 *                already on the replica when the 202 arrives, and the master
 *                counted WAITs.
 *   held_*       a 202 is held while the replica is frozen (the POST is in
 *                flight, no answer yet) and arrives only after it thaws,
 *                with the history already on the replica.
 *   frozen_*     replica frozen: intake answers 503 (retryable) within the
 *                WAIT timeout plus a generous margin, never 202; the record
 *                was written, so after the replica thaws the retry with the
 *                same Idempotency-Key answers 202 with the checkout id of
 *                that record, and new checkouts get 202 again.
 *   worker_*     a worker with REDIS_WAIT_REPLICAS=1 and the replica frozen
 *                handles the entries (their follow-ups are in the master) but
 *                keeps them pending, WAIT after WAIT; once the replica thaws
 *                it acks them all.
 *   off_*        REDIS_WAIT_REPLICAS=0 (the default): 202s and acks as
 *                before, and no WAIT reaches the master at all. */
#include <criterion/criterion.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/names.h"
#include "tests/e2e/api_env.h"
#include "tests/support/proc.h"

#define WAIT_MS 800   /* REDIS_WAIT_TIMEOUT_MS below: long enough for a well replica on a busy machine
                       * (at 300 ms the suite, run beside 39 others under ASan, once had a warm-up 503) */
#define BODY "{\"client_id\":\"c1\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}"

static api_env E;
static tf_redis R;             /* the replica */
static redisContext *RC;       /* the test's connection to the replica */
static pid_t g_worker;
static bool g_frozen;

static void replica_freeze(void)
{
    cr_assert_eq(kill(R.server_pid, SIGSTOP), 0);
    g_frozen = true;
}

static void replica_thaw(void)
{
    cr_assert_eq(kill(R.server_pid, SIGCONT), 0);
    g_frozen = false;
}

/* True when the master sees one replica online and caught up to its own
 * replication offset. */
static bool replica_in_sync(void *ud)
{
    (void)ud;
    redisReply *r = redisCommand(E.c, "INFO replication");
    if (!r || r->type != REDIS_REPLY_STRING) {
        if (r)
            freeReplyObject(r);
        return false;
    }
    long long master_off = -1, slave_off = -2;
    const char *m = strstr(r->str, "master_repl_offset:");
    if (m)
        master_off = atoll(m + strlen("master_repl_offset:"));
    const char *s = strstr(r->str, "slave0:");
    bool online = s && strstr(s, "state=online");
    const char *o = s ? strstr(s, "offset=") : NULL;
    if (o)
        slave_off = atoll(o + strlen("offset="));
    freeReplyObject(r);
    return online && master_off == slave_off;
}

/* Starts the master and the API with env, then the replica, and waits until
 * the replica is in sync. */
static void start(const char *const *api_settings)
{
    ae_setup(&E, NULL, NULL, api_settings);
    ae_product(&E, "p1", 1250, 100000);
    char conf[128];
    snprintf(conf, sizeof conf, "replicaof 127.0.0.1 %d\n", E.r.port);
    cr_assert_eq(tf_redis_start(&R, conf), 0);
    RC = tf_redis_connect(&R);
    cr_assert_not_null(RC);
    cr_assert(tf_wait_until(replica_in_sync, NULL, 10000), "the replica did not sync");
}

static void teardown(void)
{
    if (g_frozen)
        kill(R.server_pid, SIGCONT);
    g_frozen = false;
    if (g_worker > 0) {
        tf_kill(g_worker, SIGKILL);
        tf_wait_exit(g_worker, 5000, NULL);
    }
    g_worker = 0;
    if (RC)
        redisFree(RC);
    RC = NULL;
    tf_redis_stop(&R);
    ae_teardown(&E);
}

TestSuite(replica_wait, .fini = teardown, .timeout = 90);

/* The calls of WAIT the master served (INFO commandstats), 0 when none. */
static long long wait_calls(void)
{
    redisReply *r = ae_cmd(&E, "INFO commandstats");
    const char *w = strstr(r->str, "cmdstat_wait:calls=");
    long long n = w ? atoll(w + strlen("cmdstat_wait:calls=")) : 0;
    freeReplyObject(r);
    return n;
}

static long long replica_llen(const char *key)
{
    redisReply *r = redisCommand(RC, "LLEN %s", key);
    cr_assert(r && r->type == REDIS_REPLY_INTEGER, "LLEN on the replica failed");
    long long n = r->integer;
    freeReplyObject(r);
    return n;
}

/* POSTs BODY with key; returns the status and copies a 202's checkout id. */
static int post(const char *key, char *id)
{
    tf_http_resp r;
    ae_post_checkout(&E, BODY, key, &r);
    int st = r.status;
    if (st == 202) {
        json_t *j = ae_json(&r);
        snprintf(id, 65, "%s", json_string_value(json_object_get(j, "checkout_id")));
        json_decref(j);
    } else if (st == 503) {
        ae_assert_error(&r, 503, "unavailable");
        cr_assert(strstr(r.body, "\"retryable\":true"), "%s", r.body);
    }
    tf_http_resp_free(&r);
    return st;
}

/* One checkout while the replica is well: the API's first intake also opens
 * its connections and loads the scripts, so the measured ones do not. */
static void warm(void)
{
    char id[80];
    cr_assert_eq(post(NULL, id), 202);
}

static const char *const k_wait_env[] = {"REDIS_WAIT_REPLICAS=1", "REDIS_WAIT_TIMEOUT_MS=800", NULL};

Test(replica_wait, accepted_checkouts_are_on_the_replica_when_202_arrives)
{
    start(k_wait_env);
    for (int i = 0; i < 20; i++) {
        char key[32], id[80];
        snprintf(key, sizeof key, "acc-%d", i);
        cr_assert_eq(post(i % 2 ? key : NULL, id), 202);
        cm_key h = cm_key_history("checkout", id);
        cr_assert_eq(replica_llen(h.s), 1, "checkout %s is not on the replica when its 202 arrived", id);
    }
    cr_assert_geq(wait_calls(), 1, "the API never sent WAIT");
}

typedef struct held_post {
    int port;
    tf_http_resp resp;
    int rc;
    _Atomic long long answered_ms;   /* 0 until the answer is in */
} held_post;

static bool answered(void *ud)
{
    return ((held_post *)ud)->answered_ms != 0;
}

static void *post_thread(void *arg)
{
    held_post *h = arg;
    h->rc = tf_http_request(h->port, "POST", "/api/checkouts", "Content-Type: application/json\r\n"
                            "Idempotency-Key: held-1\r\n", BODY, &h->resp);
    h->answered_ms = tf_now_ms();
    return NULL;
}

Test(replica_wait, held_202_is_answered_once_the_replica_thaws)
{
    const char *env[] = {"REDIS_WAIT_REPLICAS=1", "REDIS_WAIT_TIMEOUT_MS=4000", "REDIS_TIMEOUT_MS=8000", NULL};
    start(env);
    warm();
    replica_freeze();
    held_post h = {.port = E.port};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, post_thread, &h), 0);
    /* the script has run on the master: only the replica's confirmation is missing */
    cm_key k = cm_key_idem("c1", "held-1");
    long long until = tf_now_ms() + 3000;
    while (ae_int(&E, "EXISTS %s", k.s) == 0 && tf_now_ms() < until)
        tf_sleep_ms(10);
    bool written = ae_int(&E, "EXISTS %s", k.s) == 1;
    /* written, yet no answer while the replica stays frozen */
    bool early = tf_wait_until(answered, &h, 500);
    long long thawed = tf_now_ms();
    replica_thaw();
    pthread_join(t, NULL);
    int status = h.resp.status;
    char id[80] = "";
    if (h.rc == 0 && status == 202) {
        json_t *j = ae_json(&h.resp);
        snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "checkout_id")) ?: "");
        json_decref(j);
    }
    tf_http_resp_free(&h.resp);
    cr_assert(written, "the intake script did not run within 3 s");
    cr_assert(!early, "answered %d while the replica was frozen", status);
    cr_assert_eq(h.rc, 0);
    cr_assert_eq(status, 202);
    cr_assert_geq(h.answered_ms, thawed, "the 202 came while the replica was frozen");
    cr_assert(id[0]);
    cr_assert_eq(replica_llen(cm_key_history("checkout", id).s), 1);
}

/* The checkout id the master's idempotency record of key holds. */
static void record_id(const char *key, char *id)
{
    cm_key k = cm_key_idem("c1", key);
    redisReply *r = ae_cmd(&E, "GET %s", k.s);
    cr_assert_eq(r->type, REDIS_REPLY_STRING, "no idempotency record for %s after the 503", key);
    const char *nl1 = memchr(r->str, '\n', r->len);
    cr_assert_not_null(nl1);
    const char *nl2 = strchr(nl1 + 1, '\n');
    cr_assert_not_null(nl2);
    snprintf(id, 80, "%.*s", (int)(nl2 - nl1 - 1), nl1 + 1);
    freeReplyObject(r);
}

Test(replica_wait, frozen_replica_gets_503_then_the_retry_answers_the_same_checkout)
{
    start(k_wait_env);
    warm();
    replica_freeze();
    char id[80] = "";
    long long t0 = tf_now_ms();
    cr_assert_eq(post("frozen-1", id), 503, "a checkout no replica confirmed was answered 202");
    long long took = tf_now_ms() - t0;
    cr_assert_lt(took, WAIT_MS + 3000, "the 503 took %lld ms (WAIT timeout %d ms)", took, WAIT_MS);
    cr_assert_eq(post(NULL, id), 503);
    char stored[80];
    record_id("frozen-1", stored);
    /* a retry while still frozen: the record replays, still unconfirmed */
    cr_assert_eq(post("frozen-1", id), 503);

    replica_thaw();
    cr_assert(tf_wait_until(replica_in_sync, NULL, 10000), "the replica did not catch up");
    cr_assert_eq(post("frozen-1", id), 202);
    cr_assert_str_eq(id, stored, "the retry answered another checkout");
    cm_key h = cm_key_history("checkout", id);
    cr_assert_eq(replica_llen(h.s), 1);
    cr_assert_eq(post("frozen-2", id), 202);
    cr_assert_eq(replica_llen(cm_key_history("checkout", id).s), 1);
}

static void spawn_worker(const char *wait_env)
{
    const char *bin = getenv("CHORUS_WORKER_BIN");
    cr_assert(bin && *bin, "CHORUS_WORKER_BIN is not set");
    char url[340], log[400];
    snprintf(url, sizeof url, "REDIS_URL=%s", E.r.url);
    snprintf(log, sizeof log, "%s/worker.log", E.r.dir);
    const char *env[] = {url, wait_env, "REDIS_WAIT_TIMEOUT_MS=200", "METRICS_PORT=0", "BLOCK_MS=100",
                         "RETRY_BASE_MS=100", "LOG_LEVEL=warn", NULL};
    const char *argv[] = {bin, "stock-reservation", NULL};
    g_worker = tf_spawn(argv, env, log);
    cr_assert_gt(g_worker, 0);
}

enum { NW = 5 };
static char g_ids[NW][80];

/* True when every checkout's history holds its StockReserved too. */
static bool all_reserved(void *ud)
{
    (void)ud;
    for (int i = 0; i < NW; i++)
        if (ae_int(&E, "LLEN %s", cm_key_history("checkout", g_ids[i]).s) < 2)
            return false;
    return true;
}

static long long pending(void)
{
    redisReply *r = ae_cmd(&E, "XPENDING %s %s", AE_BUS, cm_group_names[CM_W_STOCK_RESERVATION]);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    long long n = r->element[0]->integer;
    freeReplyObject(r);
    return n;
}

static bool none_pending(void *ud)
{
    (void)ud;
    return pending() == 0;
}

static bool waited_twice_since(void *ud)
{
    return wait_calls() >= *(long long *)ud + 2;
}

Test(replica_wait, worker_keeps_entries_pending_until_the_replica_confirms)
{
    start(NULL);   /* the API does not wait: only the worker does */
    replica_freeze();
    for (int i = 0; i < NW; i++)
        cr_assert_eq(post(NULL, g_ids[i]), 202);
    spawn_worker("REDIS_WAIT_REPLICAS=1");
    cr_assert(tf_wait_until(all_reserved, NULL, 15000), "the worker did not handle the checkouts");
    long long base = wait_calls();
    /* two more WAITs after every effect was in: each found no replica */
    cr_assert(tf_wait_until(waited_twice_since, &base, 10000), "the worker sent no WAIT");
    /* every bus entry it read (the checkouts and its own StockReserved) */
    long long p = pending(), len = ae_int(&E, "XLEN %s", AE_BUS);
    cr_assert_eq(len, 2 * NW);
    cr_assert_eq(p, len, "%lld of %lld entries pending: acked with no replica confirming their effects", p, len);

    replica_thaw();
    cr_assert(tf_wait_until(none_pending, NULL, 15000), "the worker did not ack once the replica was back");
    cr_assert(all_reserved(NULL));
}

Test(replica_wait, off_sends_no_wait_and_acks_as_before)
{
    start(NULL);
    for (int i = 0; i < NW; i++) {
        char key[16];
        snprintf(key, sizeof key, "off-%d", i);
        cr_assert_eq(post(i % 2 ? NULL : key, g_ids[i]), 202);
    }
    spawn_worker("REDIS_WAIT_REPLICAS=0");
    cr_assert(tf_wait_until(all_reserved, NULL, 15000), "the worker did not handle the checkouts");
    cr_assert(tf_wait_until(none_pending, NULL, 15000), "the worker did not ack");
    cr_assert_eq(wait_calls(), 0, "WAIT was sent with REDIS_WAIT_REPLICAS=0");
}

Test(replica_wait, settings_are_validated)
{
    const char *bin = getenv("CHORUS_API_BIN");
    cr_assert(bin && *bin);
    char log[] = "/tmp/chorus-replica-wait-XXXXXX";
    int fd = mkstemp(log);
    cr_assert_geq(fd, 0);
    close(fd);
    const char *bad[][2] = {{"REDIS_WAIT_REPLICAS=17", "REDIS_WAIT_TIMEOUT_MS=100"},
                            {"REDIS_WAIT_REPLICAS=1", "REDIS_WAIT_TIMEOUT_MS=5000"},
                            {"REDIS_WAIT_REPLICAS=-1", "REDIS_WAIT_TIMEOUT_MS=100"},
                            {"REDIS_WAIT_REPLICAS=1", "REDIS_WAIT_TIMEOUT_MS=0"}};
    const char *wbin = getenv("CHORUS_WORKER_BIN");
    cr_assert(wbin && *wbin);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *env[] = {bad[i][0], bad[i][1], "API_PORT=1", "REDIS_URL=redis://127.0.0.1:1", NULL};
        for (int w = 0; w < 2; w++) {
            const char *argv_api[] = {bin, NULL}, *argv_wk[] = {wbin, "audit", NULL};
            pid_t p = tf_spawn(w ? argv_wk : argv_api, env, log);
            cr_assert_gt(p, 0);
            int st = 0;
            cr_assert_eq(tf_wait_exit(p, 10000, &st), 0, "%s accepted %s %s", w ? "worker" : "api", bad[i][0],
                         bad[i][1]);
            cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "%s with %s %s: status %d", w ? "worker" : "api",
                      bad[i][0], bad[i][1], st);
        }
    }
    /* each refusal names the setting */
    FILE *f = fopen(log, "r");
    cr_assert_not_null(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    unlink(log);
    cr_assert(strstr(buf, "REDIS_WAIT_TIMEOUT_MS (5000) must be below REDIS_TIMEOUT_MS"), "%s", buf);
    cr_assert(strstr(buf, "REDIS_WAIT_REPLICAS"), "%s", buf);
}
