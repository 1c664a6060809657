/* test_api_hardening.c - chorus-api against what production does to it
 * (issue 13, rows 2, 3, 4 and 11, and the bulk dead-letter retry), over
 * real sockets with a real redis-server that is really paused, stopped and
 * killed:
 *   - secrets: a password in REDIS_URL never shows in /ready or the log; an
 *     ACL user connects with AUTH user pass; a short admin token is refused;
 *   - hostile clients: a flood of half-sent headers from one address
 *     neither starves another address nor outlives the request deadline;
 *     a trickled request is closed at its deadline; long-polls are capped;
 *   - a hung, stopped or killed Redis: /health stays fast, requests get 503
 *     fast once Redis is known unreachable, and the API recovers by itself;
 *   - errors: a permanent failure is 500 internal, an outage 503, and the
 *     outage does not log one line per request;
 *   - POST /api/dead-letters/retry moves a group's oldest dead letters.
 * Timing bounds are generous (the figures are printed beside them). */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/e2e/api_env.h"
#include "tests/support/proc.h"

#define JSON_CT "Content-Type: application/json\r\n"
#define ADMIN JSON_CT "Authorization: Bearer " AE_TOKEN "\r\n"

static api_env E;

static void teardown(void)
{
    ae_teardown(&E);
}

/* Lines of the file at path containing both a and b (b NULL: a alone). */
static int file_count(const char *path, const char *a, const char *b)
{
    int n = tf_file_count(path, a, b);
    cr_assert_geq(n, 0, "cannot open %s", path);
    return n;
}

/* True if the file at path contains needle. */
static bool file_has(const char *path, const char *needle)
{
    return file_count(path, needle, NULL) > 0;
}

/* One request on a fresh connection; returns its status (0: none) and its
 * duration in *ms. */
static int timed(const char *method, const char *path, const char *headers, const char *body, long long *ms)
{
    tf_http_resp r;
    long long t0 = tf_now_ms();
    int rc = tf_http_request(E.port, method, path, headers, body, &r);
    *ms = tf_now_ms() - t0;
    int st = rc == 0 ? r.status : 0;
    tf_http_resp_free(&r);
    return st;
}

/* ---- secrets never leave the process ------------------------------------ */

#define PW "s3cret-Pw-7781xq"

TestSuite(secrets, .fini = teardown, .timeout = 60);

Test(secrets, redis_password_never_appears_in_ready_bodies_or_the_log)
{
    /* the port is known only once the server runs: start it, then the API */
    memset(&E, 0, sizeof E);
    cr_assert_eq(tf_redis_start_auth(&E.r, "requirepass " PW "\nappendonly yes\n", NULL, PW), 0);
    E.c = tf_redis_connect(&E.r);
    snprintf(E.extra_env[0], sizeof E.extra_env[0], "REDIS_URL=redis://:" PW "@127.0.0.1:%d/0", E.r.port);
    snprintf(E.token, sizeof E.token, "%s", AE_TOKEN);
    snprintf(E.log, sizeof E.log, "%s/api.log", E.r.dir);
    ae_start_api(&E);

    /* reachable, groups missing: 503 not_ready, and the API did AUTH */
    tf_http_resp r;
    ae_req(&E, "GET", "/ready", NULL, NULL, &r);
    cr_assert_eq(r.status, 503, "%s", r.body);
    cr_assert(strstr(r.body, "\"redis\":\"ok\""), "%s", r.body);
    cr_assert_null(strstr(r.body, PW), "password in /ready: %s", r.body);
    tf_http_resp_free(&r);

    /* Redis gone: the reason names the address, masked */
    cr_assert_eq(tf_redis_kill9(&E.r), 0);
    bool masked = false;
    for (long long end = tf_now_ms() + 5000; !masked && tf_now_ms() < end;) {
        ae_req(&E, "GET", "/ready", NULL, NULL, &r);
        cr_assert_null(strstr(r.body, PW), "password in /ready: %s", r.body);
        masked = r.status == 503 && strstr(r.body, "redis://:***@127.0.0.1");
        if (masked)
            printf("secrets: /ready while down: %s\n", r.body);
        tf_http_resp_free(&r);
        if (!masked)
            tf_sleep_ms(50);
    }
    cr_assert(masked, "/ready never named the masked address while Redis was down");
    ae_req(&E, "GET", "/api/products", NULL, NULL, &r);
    cr_assert_eq(r.status, 503, "%s", r.body);
    cr_assert_null(strstr(r.body, PW), "%s", r.body);
    tf_http_resp_free(&r);

    /* back, with the same password: it recovers */
    cr_assert_eq(tf_redis_restart(&E.r), 0);
    bool back = false;
    for (long long end = tf_now_ms() + 5000; !back && tf_now_ms() < end;) {
        ae_req(&E, "GET", "/api/products", NULL, NULL, &r);
        back = r.status == 200;
        tf_http_resp_free(&r);
        if (!back)
            tf_sleep_ms(50);
    }
    cr_assert(back, "the API did not recover after Redis came back");

    ae_stop_api(&E);
    cr_assert(file_has(E.log, "redis://:***@127.0.0.1"), "the log never names the (masked) address");
    if (file_has(E.log, PW))
        tf_dump_file(E.log, "chorus-api log");
    cr_assert(!file_has(E.log, PW), "the password is in the API's log");
}

Test(secrets, an_invalid_url_is_refused_at_start_without_showing_its_password)
{
    char log[] = "/tmp/chorus-hardening-XXXXXX";
    int fd = mkstemp(log);
    cr_assert_geq(fd, 0);
    close(fd);
    const char *env[] = {"REDIS_URL=redis://app:" PW "@127.0.0.1:99999/0", "API_PORT=1", NULL};
    const char *argv[] = {getenv("CHORUS_API_BIN"), NULL};
    cr_assert_not_null(argv[0]);
    pid_t p = tf_spawn(argv, env, log);
    cr_assert_gt(p, 0);
    int st = 0;
    cr_assert_eq(tf_wait_exit(p, 10000, &st), 0, "chorus-api did not exit");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status 0x%x", st);
    cr_assert(file_has(log, "redis://app:***@127.0.0.1:99999"), "the error does not name the masked URL");
    cr_assert(!file_has(log, PW), "the password is in the error");
    unlink(log);
}

Test(secrets, an_acl_user_connects_with_auth_user_password)
{
    /* the default user is off: only AUTH app <pass> gets in */
    memset(&E, 0, sizeof E);
    cr_assert_eq(tf_redis_start_auth(&E.r, "user default off\nuser app on >app-" PW " ~* &* +@all\n", "app",
                                     "app-" PW),
                 0);
    E.c = tf_redis_connect(&E.r);
    snprintf(E.extra_env[0], sizeof E.extra_env[0], "REDIS_URL=redis://app:app-" PW "@127.0.0.1:%d/0", E.r.port);
    snprintf(E.token, sizeof E.token, "%s", AE_TOKEN);
    snprintf(E.log, sizeof E.log, "%s/api.log", E.r.dir);
    ae_start_api(&E);
    ae_product(&E, "p1", 100, 10);

    char id[65];
    ae_checkout(&E, "c-acl", "p1", 1, id);   /* 202: the event is in Redis */
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS), 1);
    redisReply *cl = ae_cmd(&E, "CLIENT LIST");
    int as_app = 0;
    for (const char *p = cl->str; (p = strstr(p, "user=app ")); p++)
        as_app++;
    freeReplyObject(cl);
    cr_assert_geq(as_app, 2, "the API's connections are not authenticated as app (%d)", as_app);
    ae_stop_api(&E);
    cr_assert(!file_has(E.log, PW), "the password is in the API's log");
}

Test(secrets, an_admin_token_shorter_than_16_bytes_is_refused_at_start)
{
    char log[] = "/tmp/chorus-hardening-XXXXXX";
    int fd = mkstemp(log);
    cr_assert_geq(fd, 0);
    close(fd);
    const char *env[] = {"CHORUS_ADMIN_TOKEN=tok-15-bytes-x", "API_PORT=1", NULL};
    const char *argv[] = {getenv("CHORUS_API_BIN"), NULL};
    cr_assert_not_null(argv[0]);
    pid_t p = tf_spawn(argv, env, log);
    cr_assert_gt(p, 0);
    int st = 0;
    cr_assert_eq(tf_wait_exit(p, 10000, &st), 0, "chorus-api did not exit");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status 0x%x", st);
    cr_assert_eq(file_count(log, "CHORUS_ADMIN_TOKEN", "at least 16"), 1, "no one-line error");
    cr_assert(!file_has(log, "tok-15-bytes-x"), "the token is in the error");
    unlink(log);
}

/* ---- hostile or slow clients cannot starve others ----------------------- */

/* A non-blocking TCP connection from src (e.g. "127.0.0.2") to the API,
 * or -1. */
static int connect_from(const char *src, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &a.sin_addr);
    struct sockaddr_in d = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &d.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        (connect(fd, (struct sockaddr *)&d, sizeof d) != 0 && errno != EINPROGRESS)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* True once the server closed fd (EOF or reset); false while it is open. */
static bool closed_by_server(int fd)
{
    char b[256];
    ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

TestSuite(clients, .fini = teardown, .timeout = 60);

#define HOSTILE 300
#define PER_IP 40

Test(clients, half_sent_headers_from_one_address_neither_starve_others_nor_outlive_the_deadline)
{
    const char *extra[] = {"API_MAX_CONNS=200", "API_MAX_CONNS_PER_IP=" "40", "API_REQUEST_TIMEOUT_S=2",
                           "API_CONN_TIMEOUT_S=60", NULL};
    ae_setup(&E, NULL, AE_TOKEN, extra);

    /* the hostile client: 127.0.0.2 (Linux routes all of 127/8 to lo) */
    int fds[HOSTILE];
    long long opened = tf_now_ms();
    for (int i = 0; i < HOSTILE; i++) {
        fds[i] = connect_from("127.0.0.2", E.port);
        cr_assert_geq(fds[i], 0, "connect from 127.0.0.2: %s", strerror(errno));
    }
    static const char half[] = "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    for (int i = 0; i < HOSTILE; i++) {
        struct pollfd p = {.fd = fds[i], .events = POLLOUT};
        if (poll(&p, 1, 1000) == 1 && !(p.revents & (POLLERR | POLLHUP)))
            (void)!send(fds[i], half, sizeof half - 1, MSG_NOSIGNAL);
    }

    /* another address is served, quickly, all along */
    long long worst = 0;
    for (int i = 0; i < 20; i++) {
        long long ms;
        int st = timed("GET", "/health", NULL, NULL, &ms);
        cr_assert_eq(st, 200, "/health from 127.0.0.1 failed (%d) while 127.0.0.2 holds its connections", st);
        worst = ms > worst ? ms : worst;
    }
    printf("clients: /health from another address, worst of 20: %lld ms\n", worst);
    cr_assert_lt(worst, 1000, "/health took %lld ms", worst);

    /* every hostile connection is closed: over the per-address cap at once,
     * the others at the 2 s request deadline (well before the 60 s idle
     * timeout) */
    int open_ = HOSTILE, late = 0;
    long long last = 0;
    bool done[HOSTILE] = {0};
    while (open_ > 0 && tf_now_ms() - opened < 6000) {
        for (int i = 0; i < HOSTILE; i++) {
            if (!done[i] && closed_by_server(fds[i])) {
                done[i] = true;
                open_--;
                long long at = tf_now_ms() - opened;
                late += at >= 1500;
                last = at;
            }
        }
        tf_sleep_ms(20);
    }
    for (int i = 0; i < HOSTILE; i++)
        close(fds[i]);
    printf("clients: %d hostile connections still open after 6 s; %d closed at the deadline, last at %lld ms\n",
           open_, late, last);
    cr_assert_eq(open_, 0, "%d half-sent requests outlived the 2 s deadline", open_);
    cr_assert_leq(late, PER_IP, "%d connections from one address were served (cap %d)", late, PER_IP);
    cr_assert_geq(late, 1, "no connection was held until the deadline: the test proves nothing");

    /* the deadline closes are counted */
    tf_http_resp r;
    ae_req(&E, "GET", "/metrics", NULL, NULL, &r);
    cr_assert(strstr(r.body, "http_connections_timed_out_total "), "no deadline metric");
    cr_assert_null(strstr(r.body, "http_connections_timed_out_total 0\n"), "no deadline close counted");
    tf_http_resp_free(&r);
}

Test(clients, a_request_trickled_byte_by_byte_is_closed_at_its_deadline)
{
    const char *extra[] = {"API_REQUEST_TIMEOUT_S=2", "API_CONN_TIMEOUT_S=60", NULL};
    ae_setup(&E, NULL, AE_TOKEN, extra);
    int fd = connect_from("127.0.0.1", E.port);
    cr_assert_geq(fd, 0);
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    cr_assert_eq(poll(&p, 1, 2000), 1);
    static const char req[] = "GET /health HTTP/1.1\r\nHost: x\r\nX-Trickle: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    long long t0 = tf_now_ms(), closed_at = -1;
    /* one byte every 100 ms: never idle, never done */
    for (size_t i = 0; closed_at < 0 && tf_now_ms() - t0 < 8000; i++) {
        char ch = i < sizeof req - 1 ? req[i] : 'a';
        if (closed_by_server(fd) || send(fd, &ch, 1, MSG_NOSIGNAL) < 0)
            closed_at = tf_now_ms() - t0;
        tf_sleep_ms(100);
    }
    close(fd);
    printf("clients: trickled request closed after %lld ms (deadline 2000 ms)\n", closed_at);
    cr_assert_geq(closed_at, 0, "a trickled request was never closed");
    cr_assert_geq(closed_at, 1500, "closed before its deadline (%lld ms)", closed_at);
    cr_assert_leq(closed_at, 4000, "closed %lld ms after it opened, deadline 2000 ms", closed_at);
}

/* A long-poll on its own connection whose answer is read later. */
typedef struct poll_conn {
    tf_http h;
} poll_conn;

static void long_poll_send(poll_conn *pc, const char *id)
{
    cr_assert_eq(tf_http_open(&pc->h, E.port, 2000), 0);
    char req[256];
    int n = snprintf(req, sizeof req, "GET /api/checkouts/%s?wait_ms=20000 HTTP/1.1\r\nHost: x\r\n\r\n", id);
    cr_assert_eq(tf_http_send_raw(&pc->h, req, (size_t)n, 2000), 0);
}

static long long metric(const char *name)
{
    tf_http_resp r;
    ae_req(&E, "GET", "/metrics", NULL, NULL, &r);
    char want[128];
    snprintf(want, sizeof want, "\n%s ", name);
    const char *p = strstr(r.body, want);
    long long v = p ? atoll(p + strlen(want)) : -1;
    tf_http_resp_free(&r);
    return v;
}

static bool two_waiting(void *ud)
{
    (void)ud;
    return metric("http_long_polls_waiting") == 2;
}

Test(clients, long_polls_over_the_cap_answer_at_once_with_the_current_state)
{
    const char *extra[] = {"API_LONG_POLLS_MAX=2", NULL};
    ae_setup(&E, NULL, AE_TOKEN, extra);
    ae_product(&E, "p1", 100, 10);
    char id[65];
    ae_checkout(&E, "c-lp", "p1", 1, id);
    poll_conn a, b;
    long_poll_send(&a, id);
    long_poll_send(&b, id);
    cr_assert(tf_wait_until(two_waiting, NULL, 5000), "the two long-polls are not waiting");

    /* the third is over the cap: the current state, at once */
    char path[200];
    snprintf(path, sizeof path, "/api/checkouts/%s?wait_ms=20000", id);
    tf_http_resp r;
    long long t0 = tf_now_ms();
    ae_req(&E, "GET", path, NULL, NULL, &r);
    long long ms = tf_now_ms() - t0;
    printf("clients: long-poll over the cap answered in %lld ms\n", ms);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(strstr(r.body, "\"status\":\"PENDING\""), "%s", r.body);
    cr_assert_lt(ms, 3000, "the long-poll over the cap waited %lld ms", ms);
    tf_http_resp_free(&r);
    cr_assert_eq(metric("http_long_polls_refused_total"), 1);

    /* the two under the cap still wake on the change */
    freeReplyObject(ae_cmd(&E, "HSET chorus:rm:checkout:%s checkout_id %s client_id c-lp status SUCCEEDED "
                               "order_id o-1 updated_at 1700000000.5", id, id));
    freeReplyObject(ae_cmd(&E, "PUBLISH chorus:rm:checkout-changed %s", id));
    poll_conn *pcs[] = {&a, &b};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(tf_http_read(&pcs[i]->h, &r, false, 5000), 0, "a long-poll under the cap got no answer");
        cr_assert(strstr(r.body, "\"status\":\"SUCCEEDED\""), "%s", r.body);
        tf_http_resp_free(&r);
        tf_http_close(&pcs[i]->h);
    }
}

/* ---- a hung, stopped or killed Redis -------------------------------------- */

/* Background load: GETs that would each block on a hung Redis. */
typedef struct load {
    pthread_t th;
    atomic_bool stop;
    char path[200];
} load;

static void *load_run(void *arg)
{
    load *l = arg;
    while (!atomic_load(&l->stop)) {
        tf_http_resp r;
        tf_http_request(E.port, "GET", l->path, NULL, NULL, &r);
        tf_http_resp_free(&r);
    }
    return NULL;
}

static void load_start(load *l, const char *path)
{
    atomic_store(&l->stop, false);
    snprintf(l->path, sizeof l->path, "%s", path);
    cr_assert_eq(pthread_create(&l->th, NULL, load_run, l), 0);
}

static void load_stop(load *l)
{
    atomic_store(&l->stop, true);
    pthread_join(l->th, NULL);
}

/* Polls GET path until it answers want; returns how long that took (ms),
 * or -1 after deadline_ms. */
static long long until_status(const char *path, int want, int deadline_ms)
{
    long long t0 = tf_now_ms();
    while (tf_now_ms() - t0 < deadline_ms) {
        long long ms;
        if (timed("GET", path, NULL, NULL, &ms) == want)
            return tf_now_ms() - t0;
        tf_sleep_ms(10);
    }
    return -1;
}

/* While Redis is known unreachable: 10 requests each 503 fast, /health fast.
 * Prints and asserts the worst of each (issue: 250 ms and 10 ms; asserted
 * with room for a loaded CI machine). */
static void assert_fails_fast(const char *what, const char *path)
{
    long long worst503 = 0, worst_health = 0;
    for (int i = 0; i < 10; i++) {
        long long ms;
        int st = timed("GET", path, NULL, NULL, &ms);
        cr_assert_eq(st, 503, "%s: %s answered %d", what, path, st);
        worst503 = ms > worst503 ? ms : worst503;
        st = timed("GET", "/health", NULL, NULL, &ms);
        cr_assert_eq(st, 200, "%s: /health answered %d", what, st);
        worst_health = ms > worst_health ? ms : worst_health;
    }
    printf("redis %s: worst 503 %lld ms (issue: 250), worst /health %lld ms (issue: 10)\n", what, worst503,
           worst_health);
    cr_assert_lt(worst503, 1000, "%s: a 503 took %lld ms", what, worst503);
    cr_assert_lt(worst_health, 1000, "%s: /health took %lld ms", what, worst_health);
}

static void hung_setup(void)
{
    ae_setup(&E, "appendonly yes\nappendfsync always\n", AE_TOKEN, NULL);
    ae_product(&E, "p1", 100, 10);
}

TestSuite(redis_outage, .init = hung_setup, .fini = teardown, .timeout = 90);

Test(redis_outage, a_paused_redis_gets_fast_503s_fast_health_and_the_api_recovers)
{
    load l1, l2;
    load_start(&l1, "/api/products/p1");
    load_start(&l2, "/api/products/p1");
    redisContext *c = tf_redis_connect(&E.r);
    long long t0 = tf_now_ms();
    redisReply *r = redisCommand(c, "CLIENT PAUSE 4000 ALL");
    cr_assert(r && r->type == REDIS_REPLY_STATUS, "CLIENT PAUSE failed");
    freeReplyObject(r);
    /* /health while the pool threads may be blocked on the hung Redis */
    long long worst = 0;
    for (int i = 0; i < 10; i++) {
        long long ms;
        cr_assert_eq(timed("GET", "/health", NULL, NULL, &ms), 200);
        worst = ms > worst ? ms : worst;
    }
    printf("redis paused: worst /health from the pause on %lld ms\n", worst);
    cr_assert_lt(worst, 1000, "/health took %lld ms with Redis hung", worst);
    long long known = until_status("/api/products/p1", 503, 3000);
    printf("redis paused: first 503 after %lld ms\n", known < 0 ? -1 : tf_now_ms() - t0);
    cr_assert_geq(known, 0, "no 503 while Redis is paused");
    assert_fails_fast("paused", "/api/products/p1");
    cr_assert_lt(tf_now_ms() - t0, 3800, "the checks ran past the pause; raise it");
    long long back = until_status("/api/products/p1", 200, 10000);
    printf("redis paused: back to 200 %lld ms after the pause began\n", tf_now_ms() - t0);
    cr_assert_geq(back, 0, "the API did not recover after the pause");
    load_stop(&l1);
    load_stop(&l2);
    redisFree(c);
}

Test(redis_outage, a_stopped_then_killed_redis_gets_fast_503s_and_the_api_recovers)
{
    char id[80];
    ae_checkout(&E, "c-outage", "p1", 1, id);   /* the intake batcher has its connection now */
    load l1;
    load_start(&l1, "/api/products/p1");
    cr_assert_gt(E.r.server_pid, 0);
    cr_assert_eq(kill(E.r.server_pid, SIGSTOP), 0);
    long long known = until_status("/api/products/p1", 503, 3000);
    cr_assert_geq(known, 0, "no 503 while Redis is stopped");
    assert_fails_fast("stopped", "/api/products/p1");
    cr_assert_eq(kill(E.r.server_pid, SIGCONT), 0);
    cr_assert_geq(until_status("/api/products/p1", 200, 10000), 0, "no recovery after SIGCONT");

    cr_assert_eq(tf_redis_kill9(&E.r), 0);
    cr_assert_geq(until_status("/api/products/p1", 503, 3000), 0, "no 503 while Redis is down");
    assert_fails_fast("killed", "/api/products/p1");
    cr_assert_eq(tf_redis_restart(&E.r), 0);
    long long back = until_status("/api/products/p1", 200, 10000);
    printf("redis killed: back to 200 %lld ms after the restart\n", back);
    cr_assert_geq(back, 0, "no recovery after the restart");
    /* the batcher's connection died with the old server: once the API is
     * back, the first checkout must not be spent finding that out */
    tf_http_resp r;
    ae_post_checkout(&E, "{\"client_id\":\"c-outage\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", NULL,
                     &r);
    cr_expect_eq(r.status, 202, "first checkout after the recovery: %d %s", r.status, r.body);
    tf_http_resp_free(&r);
    load_stop(&l1);
    redisFree(E.c);
    E.c = tf_redis_connect(&E.r);
}

/* ---- errors say what they are -------------------------------------------- */

TestSuite(errors, .init = hung_setup, .fini = teardown, .timeout = 60);

static void assert_internal(const char *product)
{
    char body[256];
    snprintf(body, sizeof body, "{\"client_id\":\"c-1\",\"items\":[{\"product_id\":\"%s\",\"quantity\":1}]}",
             product);
    tf_http_resp r;
    ae_post_checkout(&E, body, "k-perm", &r);
    ae_assert_error(&r, 500, "internal");
    char ra[32];
    cr_assert_null(tf_http_header(&r, "Retry-After", ra, sizeof ra), "a permanent failure says retry");
    cr_assert_null(strstr(r.body, "retryable"), "%s", r.body);
    tf_http_resp_free(&r);
}

Test(errors, a_wrong_type_or_corrupt_catalog_entry_is_500_internal_not_retryable)
{
    freeReplyObject(ae_cmd(&E, "SET chorus:product:x 1"));   /* WRONGTYPE in the script */
    assert_internal("x");
    freeReplyObject(ae_cmd(&E, "HSET chorus:product:y name y price_cents 12abc available 5 reserved 0 sold 0"));
    assert_internal("y");
    cr_assert_eq(ae_int(&E, "EXISTS " AE_BUS), 0, "a refused checkout wrote to the bus");
    /* and an unreachable Redis is still the retryable 503 */
    cr_assert_eq(tf_redis_kill9(&E.r), 0);
    tf_http_resp r;
    ae_post_checkout(&E, "{\"client_id\":\"c-1\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", "k-2", &r);
    ae_assert_error(&r, 503, "unavailable");
    tf_http_resp_free(&r);
}

Test(errors, redis_down_is_503_and_the_log_is_not_one_warn_line_per_request)
{
    cr_assert_eq(tf_redis_kill9(&E.r), 0);
    int n503 = 0;
    for (int i = 0; i < 60; i++) {
        tf_http_resp r;
        ae_post_checkout(&E, "{\"client_id\":\"c-1\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}", NULL, &r);
        n503 += r.status == 503;
        tf_http_resp_free(&r);
    }
    cr_assert_eq(n503, 60, "%d of 60 were 503", n503);
    ae_stop_api(&E);
    int warns = file_count(E.log, "\"level\":\"warn\"", "unavailable");
    printf("errors: 60 requests while Redis was down logged %d warn lines about it\n", warns);
    cr_assert_gt(warns, 0, "the outage was not logged at all");
    cr_assert_lt(warns, 15, "%d warn lines for 60 requests: not rate-limited", warns);
}

/* ---- bulk dead-letter re-delivery ---------------------------------------- */

static void park(const char *group, int i, char *id_out)
{
    redisReply *r = ae_cmd(&E,
                           "XADD " AE_BUS ".dlq.%s * group %s reason handler_refused attempts 5 stream " AE_BUS
                           " entry_id 1-%d type CheckoutInitiated payload {\"n\":%d} ts 1700000000.5",
                           group, group, i, i);
    if (id_out)
        snprintf(id_out, 64, "%s", r->str);
    freeReplyObject(r);
}

static void post_bulk(const char *headers, const char *body, tf_http_resp *r)
{
    ae_req(&E, "POST", "/api/dead-letters/retry", headers, body, r);
}

static void setup_plain(void)
{
    ae_setup(&E, NULL, AE_TOKEN, NULL);
}

TestSuite(dlq_bulk, .init = setup_plain, .fini = teardown, .timeout = 60);

Test(dlq_bulk, bulk_retry_redelivers_up_to_count_of_a_groups_oldest_dead_letters)
{
    char ids[5][64];
    for (int i = 0; i < 5; i++)
        park("choreo-audit", i, ids[i]);
    park("choreo-cqrs", 9, NULL);

    tf_http_resp r;
    freeReplyObject(ae_cmd(&E, "CONFIG RESETSTAT"));
    post_bulk(ADMIN, "{\"group\":\"choreo-audit\",\"count\":3}", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    /* one script call did it, not a round trip per entry */
    redisReply *info = ae_cmd(&E, "INFO commandstats");
    long long calls = 0;
    for (const char *k = info->str; (k = strstr(k, "cmdstat_eval")) != NULL; k++) {
        const char *c = strstr(k, "calls=");
        calls += c ? strtoll(c + 6, NULL, 10) : 0;
    }
    freeReplyObject(info);
    cr_assert_eq(calls, 1, "%lld script calls for one bulk retry", calls);
    json_t *j = ae_json(&r);
    cr_assert_eq(json_integer_value(json_object_get(j, "retried")), 3, "%s", r.body);
    json_decref(j);
    tf_http_resp_free(&r);

    /* the three oldest, in order, now in the group's redelivery stream */
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS ".dlq.choreo-audit"), 2);
    redisReply *x = ae_cmd(&E, "XRANGE " AE_BUS ".retry.choreo-audit - +");
    cr_assert_eq(x->elements, 3);
    for (size_t i = 0; i < 3; i++) {
        redisReply *f = x->element[i]->element[1];
        const char *dl = NULL;
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            if (!strcmp(f->element[k]->str, "dead_letter"))
                dl = f->element[k + 1]->str;
        cr_assert_str_eq(dl ? dl : "", ids[i], "redelivery %zu is not the %zu-th oldest", i, i);
    }
    freeReplyObject(x);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS ".dlq.choreo-cqrs"), 1, "another group's dead letter moved");

    /* the rest, then nothing left */
    post_bulk(ADMIN, "{\"group\":\"choreo-audit\",\"count\":1000}", &r);
    cr_assert(r.status == 200 && strstr(r.body, "\"retried\":2"), "%d %s", r.status, r.body);
    tf_http_resp_free(&r);
    post_bulk(ADMIN, "{\"group\":\"choreo-audit\",\"count\":1}", &r);
    cr_assert(r.status == 200 && strstr(r.body, "\"retried\":0"), "%d %s", r.status, r.body);
    tf_http_resp_free(&r);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS ".retry.choreo-audit"), 5);
}

Test(dlq_bulk, bulk_retry_validates_group_count_and_token)
{
    park("choreo-audit", 1, NULL);
    static const char *const bad[] = {
        "{\"group\":\"nope\",\"count\":1}",   "{\"count\":1}",
        "{\"group\":\"choreo-audit\",\"count\":0}", "{\"group\":\"choreo-audit\",\"count\":1001}",
        "{\"group\":\"choreo-audit\",\"count\":\"3\"}", "{\"group\":\"choreo-audit\"}",
        "[1]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tf_http_resp r;
        post_bulk(ADMIN, bad[i], &r);
        ae_assert_error(&r, 400, "invalid_request");
        tf_http_resp_free(&r);
    }
    tf_http_resp r;
    post_bulk(ADMIN, "{\"group\":", &r);
    ae_assert_error(&r, 400, "invalid_json");
    tf_http_resp_free(&r);
    post_bulk(JSON_CT, "{\"group\":\"choreo-audit\",\"count\":1}", &r);
    ae_assert_error(&r, 401, "unauthorized");
    tf_http_resp_free(&r);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS ".dlq.choreo-audit"), 1, "a refused request moved a dead letter");
}
