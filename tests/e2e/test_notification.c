/* test_notification.c - the notification worker (workers/notification.c)
 * with a real redis-server, real `chorus-worker notification` processes and
 * a real HTTP receiver (a thread of this test with a listening socket).
 *
 * Guarantees shown: one notification log entry per terminal checkout, none
 * for a checkout still running, even with two worker copies and every event
 * delivered again; the webhook gets the notification with an
 * Idempotency-Key, is retried with backoff until it answers 2xx, and is never
 * called again once a 2xx was recorded (even when the event is redelivered);
 * a receiver that is down (connections refused) for seconds gets every
 * notification exactly once when it is back, none dead-lettered, with the
 * default retry settings; a webhook that never accepts ends in the
 * dead-letter stream (after MAX_DELIVERIES when set, or once its time budget
 * RETRY_BUDGET_MS is spent); a webhook that hangs opens the breaker (no
 * call, notifications still logged) and, once it answers, gets each
 * notification exactly once; a malformed
 * NOTIFY_WEBHOOK_URL stops the worker at startup with a clear message.
 *
 * CHORUS_WORKER_BIN (meson env) names the chorus-worker binary. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/names.h"
#include "common/redis.h"
#include "tests/e2e/saga_env.h"
#include "tests/integration/saga_events.h"
#include "tests/support/proc.h"

#define BUS CM_BUS_STREAM_DEFAULT
#define GROUP "choreo-notification"
#define LOG_KEY "chorus:notify:log"
#define WAIT_MS 20000

static sg_env E;

static void setup(void)
{
    sg_setup(&E, NULL);
}

static void teardown(void)
{
    sg_teardown(&E);
}

TestSuite(notification, .init = setup, .fini = teardown, .timeout = 120);

/* ---- a tiny HTTP receiver ------------------------------------------------ */

#define MAX_CALLS 32

typedef struct call {
    char method[16], path[128], idem[128];
    char body[1024];
    bool hung;                 /* held without an answer (hang mode) */
} call;

typedef struct receiver {
    int fd, port;
    int fail_first;            /* answer 503 to this many calls, then 200 */
    int status_after;          /* what to answer after them */
    atomic_bool hang;          /* read requests, never answer (until cleared) */
    int held[MAX_CALLS];       /* connections held open in hang mode */
    int nheld;
    atomic_bool stop;
    pthread_t thread;
    pthread_mutex_t mu;
    call calls[MAX_CALLS];
    int ncalls;
} receiver;

/* Reads one request (head + Content-Length body) from fd into c. */
static bool read_request(int fd, call *c)
{
    char buf[4096];
    size_t len = 0;
    char *end = NULL;
    while (!end && len < sizeof buf - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 5000) <= 0)
            return false;
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            return false;
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    if (!end)
        return false;
    sscanf(buf, "%15s %127s", c->method, c->path);
    size_t clen = 0;
    for (char *line = strstr(buf, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        if (!strncasecmp(line + 2, "Content-Length:", 15))
            clen = strtoul(line + 17, NULL, 10);
        if (!strncasecmp(line + 2, "Idempotency-Key:", 16)) {
            const char *v = line + 18;
            while (*v == ' ')
                v++;
            snprintf(c->idem, sizeof c->idem, "%.*s", (int)strcspn(v, "\r"), v);
        }
    }
    size_t have = len - (size_t)(end + 4 - buf);
    while (have < clen && len < sizeof buf - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 5000) <= 0)
            return false;
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            return false;
        len += (size_t)n;
        have += (size_t)n;
    }
    snprintf(c->body, sizeof c->body, "%.*s", (int)clen, end + 4);
    return true;
}

/* Closes the connections hang mode held, once it is over. */
static void release_held(receiver *rv)
{
    for (int i = 0; i < rv->nheld; i++)
        close(rv->held[i]);
    rv->nheld = 0;
}

static void *serve(void *arg)
{
    receiver *rv = arg;
    while (!atomic_load(&rv->stop)) {
        if (!atomic_load(&rv->hang))
            release_held(rv);
        struct pollfd p = {rv->fd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int fd = accept(rv->fd, NULL, NULL);
        if (fd < 0)
            continue;
        call c = {0};
        if (atomic_load(&rv->hang) && rv->nheld < MAX_CALLS && read_request(fd, &c)) {
            c.hung = true;
            pthread_mutex_lock(&rv->mu);
            if (rv->ncalls < MAX_CALLS)
                rv->calls[rv->ncalls++] = c;
            pthread_mutex_unlock(&rv->mu);
            rv->held[rv->nheld++] = fd;   /* no answer, connection kept open */
            continue;
        }
        if (read_request(fd, &c)) {
            pthread_mutex_lock(&rv->mu);
            int i = rv->ncalls;
            if (i < MAX_CALLS)
                rv->calls[rv->ncalls++] = c;
            pthread_mutex_unlock(&rv->mu);
            int status = i < rv->fail_first ? 503 : rv->status_after;
            char resp[256];
            int n = snprintf(resp, sizeof resp,
                             "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                             "Connection: close\r\n\r\n{}",
                             status);
            (void)!write(fd, resp, (size_t)n);
        }
        close(fd);
    }
    release_held(rv);
    return NULL;
}

/* Starts the receiver on 127.0.0.1:port (0: any free port). */
static void receiver_start_on(receiver *rv, int port, int fail_first, int status_after)
{
    memset(rv, 0, sizeof *rv);
    rv->fail_first = fail_first;
    rv->status_after = status_after;
    pthread_mutex_init(&rv->mu, NULL);
    rv->fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(rv->fd, 0);
    int one = 1;
    cr_assert_eq(setsockopt(rv->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(rv->fd, (struct sockaddr *)&a, sizeof a), 0, "bind: %s", strerror(errno));
    socklen_t al = sizeof a;
    cr_assert_eq(getsockname(rv->fd, (struct sockaddr *)&a, &al), 0);
    rv->port = ntohs(a.sin_port);
    cr_assert_eq(listen(rv->fd, 16), 0);
    cr_assert_eq(pthread_create(&rv->thread, NULL, serve, rv), 0);
}

static void receiver_start(receiver *rv, int fail_first, int status_after)
{
    receiver_start_on(rv, 0, fail_first, status_after);
}

static void receiver_stop(receiver *rv)
{
    atomic_store(&rv->stop, true);
    pthread_join(rv->thread, NULL);
    close(rv->fd);
    pthread_mutex_destroy(&rv->mu);
}

static int receiver_calls(receiver *rv)
{
    pthread_mutex_lock(&rv->mu);
    int n = rv->ncalls;
    pthread_mutex_unlock(&rv->mu);
    return n;
}

/* ---- helpers ------------------------------------------------------------- */

static void wait_idle(void)
{
    bool ok = sx_wait_group_idle(E.c, BUS, GROUP, WAIT_MS);
    if (!ok)
        sg_dump_logs(&E);
    cr_assert(ok, "the notification group did not finish the bus");
}

/* Delivers every event of the bus again: the group rewound, copies on the
 * group's redelivery stream, copies appended to the bus. */
static void redeliver_everything(void)
{
    char retry[256];
    snprintf(retry, sizeof retry, "%s.retry.%s", BUS, GROUP);
    redisReply *all = redisCommand(E.c, "XRANGE %s - +", BUS);
    cr_assert(all && all->type == REDIS_REPLY_ARRAY);
    const char *targets[] = {retry, BUS};
    for (int t = 0; t < 2; t++)
        for (size_t i = 0; i < all->elements; i++) {
            const redisReply *f = all->element[i]->element[1];
            const char *argv[16] = {"XADD", targets[t], "*"};
            size_t argc = 3;
            for (size_t j = 0; j < f->elements && argc < 16; j++)
                argv[argc++] = f->element[j]->str;
            freeReplyObject(redisCommandArgv(E.c, (int)argc, argv, NULL));
        }
    freeReplyObject(all);
    sg_ll(&E, "XGROUP SETID %s %s 0", BUS, GROUP);
    bool ok = sx_wait_group_idle(E.c, BUS, GROUP, WAIT_MS) && sx_wait_group_idle(E.c, retry, GROUP, WAIT_MS);
    if (!ok)
        sg_dump_logs(&E);
    cr_assert(ok, "the redeliveries were not consumed");
}

/* The event id of the checkout's event of type. */
static char *event_id_of(const char *checkout_id, const char *type)
{
    size_t n;
    es_event **evs = sx_history(E.s, checkout_id, &n);
    char *id = NULL;
    for (size_t i = 0; i < n && !id; i++)
        if (!strcmp(evs[i]->type, type))
            id = strdup(evs[i]->event_id);
    es_events_free(evs, n);
    cr_assert_not_null(id, "%s has no %s", checkout_id, type);
    return id;
}

/* Asserts the log holds exactly one entry for checkout_id, with these fields. */
static void assert_logged_once(const char *checkout_id, const char *status, const char *field, const char *value,
                               const char *event_id)
{
    redisReply *r = redisCommand(E.c, "XRANGE %s - +", LOG_KEY);
    cr_assert(r && r->type == REDIS_REPLY_ARRAY);
    int found = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *f = r->element[i]->element[1];
        if (f->elements != 8 || strcmp(f->element[1]->str, checkout_id) != 0)
            continue;
        found++;
        cr_assert_str_eq(f->element[0]->str, "checkout_id");
        cr_assert_str_eq(f->element[2]->str, "status");
        cr_assert_str_eq(f->element[3]->str, status);
        cr_assert_str_eq(f->element[4]->str, field);
        cr_assert_str_eq(f->element[5]->str, value);
        cr_assert_str_eq(f->element[6]->str, "event_id");
        cr_assert_str_eq(f->element[7]->str, event_id);
    }
    freeReplyObject(r);
    cr_assert_eq(found, 1, "%s has %d notification log entries", checkout_id, found);
}

static int spawn_notification(const char *webhook_url, const char *max_deliveries)
{
    char url[200] = "NOTIFY_WEBHOOK_URL=", md[64];
    if (webhook_url)
        snprintf(url, sizeof url, "NOTIFY_WEBHOOK_URL=%s", webhook_url);
    snprintf(md, sizeof md, "MAX_DELIVERIES=%s", max_deliveries ? max_deliveries : "10");
    const char *env[] = {url, md, "RETRY_BASE_MS=30", "RETRY_MAX_MS=200", "NOTIFY_TIMEOUT_MS=2000", NULL};
    return sg_spawn(&E, "notification", env);
}

/* ---- tests --------------------------------------------------------------- */

Test(notification, one_log_entry_per_terminal_checkout_even_when_delivered_twice)
{
    spawn_notification(NULL, NULL);
    spawn_notification(NULL, NULL);
    sx_saga(E.s, SX_SUCCESS, "co-ok", "c1", "p1", 2);
    sx_saga(E.s, SX_NO_STOCK, "co-nostock", "c1", "p1", 2);
    sx_saga(E.s, SX_ORDER_LIMIT, "co-limit", "c1", "p1", 2);
    sx_event(E.s, "co-running", "CheckoutInitiated", json_pack("{s:s, s:[], s:i}", "client_id", "c1", "items",
                                                              "total_cents", 0));
    cr_assert(sx_wait_ll(E.c, LOG_KEY, NULL, 3, WAIT_MS), "three terminal checkouts, three notifications");
    wait_idle();
    redeliver_everything();
    cr_assert_eq(sg_ll(&E, "XLEN %s", LOG_KEY), 3, "a redelivered terminal event was notified again");

    char *ok_id = event_id_of("co-ok", "CheckoutSucceeded");
    char *ns_id = event_id_of("co-nostock", "CheckoutFailed");
    char *lim_id = event_id_of("co-limit", "CheckoutFailed");
    assert_logged_once("co-ok", CM_STATUS_SUCCEEDED, "order_id", "ord-co-ok", ok_id);
    assert_logged_once("co-nostock", CM_STATUS_FAILED, "reason", CM_REASON_INSUFFICIENT_STOCK, ns_id);
    assert_logged_once("co-limit", CM_STATUS_FAILED, "reason", CM_REASON_ORDER_LIMIT, lim_id);
    char *st = sg_str(&E, "HGET chorus:notify:co-ok status");
    cr_assert_str_eq(st, CM_STATUS_SUCCEEDED);
    free(st);
    cr_assert_eq(sg_ll(&E, "EXISTS chorus:notify:co-running"), 0, "a running checkout is not notified");
    cr_assert_eq(sg_ll(&E, "HEXISTS chorus:notify:co-ok webhook_status"), 0, "no webhook configured");
    free(ok_id);
    free(ns_id);
    free(lim_id);
}

Test(notification, webhook_is_retried_until_2xx_then_never_called_again)
{
    receiver rv;
    receiver_start(&rv, 2, 200);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hooks/checkout?src=chorus", rv.port);
    spawn_notification(url, NULL);
    sx_saga(E.s, SX_SUCCESS, "co-w", "c1", "p1", 1);
    bool ok = sx_wait_ll(E.c, "chorus:notify:co-w", "webhook_status", 200, WAIT_MS);
    if (!ok)
        sg_dump_logs(&E);
    cr_assert(ok, "the webhook's 2xx was never recorded");
    wait_idle();
    cr_assert_eq(receiver_calls(&rv), 3, "two 503s, then the 200");
    cr_assert_eq(sg_ll(&E, "HGET chorus:notify:co-w webhook_attempts"), 3);

    char *eid = event_id_of("co-w", "CheckoutSucceeded");
    for (int i = 0; i < 3; i++) {
        const call *c = &rv.calls[i];
        cr_assert_str_eq(c->method, "POST");
        cr_assert_str_eq(c->path, "/hooks/checkout?src=chorus");
        cr_assert_str_eq(c->idem, "co-w", "call %d: Idempotency-Key is the checkout id", i);
        json_error_t je;
        json_t *b = json_loads(c->body, 0, &je);
        cr_assert_not_null(b, "call %d body is not JSON: %s", i, c->body);
        cr_assert_str_eq(json_string_value(json_object_get(b, "checkout_id")), "co-w");
        cr_assert_str_eq(json_string_value(json_object_get(b, "status")), CM_STATUS_SUCCEEDED);
        cr_assert_str_eq(json_string_value(json_object_get(b, "order_id")), "ord-co-w");
        cr_assert_str_eq(json_string_value(json_object_get(b, "event_id")), eid);
        json_decref(b);
    }
    free(eid);

    redeliver_everything();
    cr_assert_eq(receiver_calls(&rv), 3, "the webhook was called again after its 2xx");
    cr_assert_eq(sg_ll(&E, "XLEN %s", LOG_KEY), 1);
    receiver_stop(&rv);
}

Test(notification, webhook_that_never_accepts_ends_in_the_dead_letter_stream)
{
    receiver rv;
    receiver_start(&rv, 0, 500);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", rv.port);
    spawn_notification(url, "3");
    sx_saga(E.s, SX_NO_STOCK, "co-x", "c1", "p1", 1);
    bool ok = sx_wait_ll(E.c, BUS ".dlq." GROUP, NULL, 1, WAIT_MS);
    if (!ok)
        sg_dump_logs(&E);
    cr_assert(ok, "the failing notification was not dead-lettered");
    cr_assert_eq(receiver_calls(&rv), 3, "MAX_DELIVERIES attempts");
    cr_assert_eq(sg_ll(&E, "HEXISTS chorus:notify:co-x webhook_status"), 0);
    char *err = sg_str(&E, "HGET chorus:notify:co-x webhook_last_error");
    cr_assert(err && strstr(err, "500"), "the last error is recorded: %s", err ? err : "(none)");
    free(err);
    cr_assert_eq(sg_ll(&E, "XLEN %s", LOG_KEY), 1, "the log entry stays single");
    receiver_stop(&rv);
}

Test(notification, unreachable_webhook_is_a_failed_attempt_not_a_crash)
{
    int port = tf_free_port();   /* nobody listens there */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", port);
    int w = spawn_notification(url, "2");
    sx_saga(E.s, SX_SUCCESS, "co-u", "c1", "p1", 1);
    bool ok = sx_wait_ll(E.c, BUS ".dlq." GROUP, NULL, 1, WAIT_MS);
    if (!ok)
        sg_dump_logs(&E);
    cr_assert(ok);
    cr_assert_eq(sg_ll(&E, "HGET chorus:notify:co-u webhook_attempts"), 2);
    cr_assert_gt(E.p[w].pid, 0);
    cr_assert_eq(tf_kill(E.p[w].pid, 0), 0, "the worker still runs");
}

/* Spawns the worker with url and returns its exit status and log. */
static int start_with_bad_url(const char *url, char *log, size_t loglen)
{
    char env[300];
    snprintf(env, sizeof env, "NOTIFY_WEBHOOK_URL=%s", url);
    int i = sg_spawn(&E, "notification", (const char *const[]){env, NULL});
    int st = 0;
    cr_assert_eq(tf_wait_exit(E.p[i].pid, 10000, &st), 0, "the worker kept running with %s", url);
    E.p[i].pid = 0;
    FILE *f = fopen(E.p[i].log, "r");
    cr_assert_not_null(f);
    size_t n = fread(log, 1, loglen - 1, f);
    log[n] = '\0';
    fclose(f);
    return st;
}

Test(notification, malformed_webhook_url_stops_the_worker_at_startup)
{
    static const struct {
        const char *url, *says;
    } cases[] = {
        {"https://hooks.example/x", "https is not supported"},
        {"ftp://hooks.example/x", "http://host[:port]/path"},
        {"http://hooks.example:99999/x", "port must be 1..65535"},
        {"http://user:pw@hooks.example/x", "no user:password@"},
        {"http:///x", "no host"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char log[8192];
        int st = start_with_bad_url(cases[i].url, log, sizeof log);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0, "%s: exit status %d", cases[i].url, st);
        cr_assert(strstr(log, cases[i].says), "%s: the log does not say \"%s\":\n%s", cases[i].url, cases[i].says,
                  log);
    }
}

/* ---- outages are waited out ---------------------------------------------- */

typedef struct markers {
    char ids[16][32];
    int n;
    const char *field;
    long long at_least;
} markers;

/* True when every checkout's marker has HGET field >= at_least. */
static bool markers_reach(void *ud)
{
    const markers *m = ud;
    for (int i = 0; i < m->n; i++) {
        redisReply *r = redisCommand(E.c, "HGET chorus:notify:%s %s", m->ids[i], m->field);
        cr_assert_not_null(r);
        long long v = cm_reply_ll(r, 0);
        freeReplyObject(r);
        if (v < m->at_least)
            return false;
    }
    return true;
}

/* The receiver refuses connections (nothing listens on its port) for 3 s,
 * then answers 200: with the default retry settings (no MAX_DELIVERIES,
 * CLAIM_IDLE_MS 30 s) every notification is POSTed until it lands, each gets
 * exactly one 2xx, and nothing is dead-lettered. */
Test(notification, receiver_down_for_seconds_gets_every_notification_once_none_parked)
{
    enum { N = 10, DOWN_MS = 3000 };
    int port = tf_free_port();
    cr_assert_gt(port, 0);
    char url[128];
    snprintf(url, sizeof url, "NOTIFY_WEBHOOK_URL=http://127.0.0.1:%d/hook", port);
    const char *env[] = {url, "CLAIM_IDLE_MS=30000", "NOTIFY_TIMEOUT_MS=2000", NULL};
    long long t0 = tf_now_ms();
    sg_spawn(&E, "notification", env);
    markers m = {.n = N, .field = "webhook_attempts", .at_least = 2};
    for (int i = 0; i < N; i++) {
        snprintf(m.ids[i], sizeof m.ids[i], "co-down-%d", i);
        sx_saga(E.s, i % 2 ? SX_NO_STOCK : SX_SUCCESS, m.ids[i], "c1", "p1", 1);
    }
    /* the outage: every notification fails at least twice while it lasts */
    bool failed = tf_wait_until(markers_reach, &m, DOWN_MS + 10000);
    if (!failed)
        sg_dump_logs(&E);
    cr_assert(failed, "the notifications were not retried while the receiver was down");
    long long left = DOWN_MS - (tf_now_ms() - t0);
    if (left > 0)
        tf_sleep_ms((int)left);   /* the rest of the receiver's downtime */
    cr_assert_eq(sg_dlq_len(&E, GROUP), 0, "dead-lettered during a %d ms outage", DOWN_MS);

    receiver rv;
    receiver_start_on(&rv, port, 0, 200);
    long long back = tf_now_ms();
    m.field = "webhook_status";
    m.at_least = 200;
    bool ok = tf_wait_until(markers_reach, &m, 30000);
    if (!ok)
        sg_dump_logs(&E);
    cr_assert(ok, "not every notification reached the receiver after it came back");
    cr_log_info("receiver back: every notification delivered %lld ms later", tf_now_ms() - back);
    wait_idle();
    cr_assert_eq(receiver_calls(&rv), N, "%d POSTs reached the receiver for %d notifications", receiver_calls(&rv),
                 N);
    for (int i = 0; i < N; i++) {
        int seen = 0;
        for (int c = 0; c < receiver_calls(&rv); c++)
            seen += !strcmp(rv.calls[c].idem, m.ids[i]);
        cr_assert_eq(seen, 1, "%s was answered 2xx %d times", m.ids[i], seen);
    }
    cr_assert_eq(sg_dlq_len(&E, GROUP), 0, "a notification was dead-lettered");
    cr_assert_eq(sg_ll(&E, "XLEN %s", LOG_KEY), N);
    receiver_stop(&rv);
}

/* A receiver that keeps failing past RETRY_BUDGET_MS (no MAX_DELIVERIES):
 * the notification is parked with a reason naming the budget, only after the
 * budget has passed, and after more attempts than the old count limit. */
Test(notification, webhook_failing_past_its_time_budget_is_parked_with_the_reason)
{
    enum { BUDGET_MS = 1500 };
    receiver rv;
    receiver_start(&rv, 0, 500);
    char url[128], budget[64];
    snprintf(url, sizeof url, "NOTIFY_WEBHOOK_URL=http://127.0.0.1:%d/", rv.port);
    snprintf(budget, sizeof budget, "RETRY_BUDGET_MS=%d", BUDGET_MS);
    const char *env[] = {url, budget, "RETRY_BASE_MS=30", "RETRY_MAX_MS=200", NULL};
    long long t0 = tf_now_ms();
    sg_spawn(&E, "notification", env);
    sx_saga(E.s, SX_SUCCESS, "co-budget", "c1", "p1", 1);
    bool ok = sx_wait_ll(E.c, BUS ".dlq." GROUP, NULL, 1, WAIT_MS);
    if (!ok)
        sg_dump_logs(&E);
    cr_assert(ok, "the failing notification was never parked");
    long long took = tf_now_ms() - t0;
    cr_log_info("parked after %lld ms and %d POSTs", took, receiver_calls(&rv));
    cr_assert_geq(took, BUDGET_MS, "parked after %lld ms, before the %d ms budget", took, BUDGET_MS);
    cr_assert_gt(receiver_calls(&rv), 5, "only %d attempts in the budget", receiver_calls(&rv));
    redisReply *r = redisCommand(E.c, "XRANGE %s - +", BUS ".dlq." GROUP);
    cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1);
    const redisReply *f = r->element[0]->element[1];
    const char *reason = NULL;
    for (size_t j = 0; j + 1 < f->elements; j += 2)
        if (!strcmp(f->element[j]->str, "reason"))
            reason = f->element[j + 1]->str;
    cr_assert(reason && strstr(reason, "retry budget") && strstr(reason, "500"), "reason: %s",
              reason ? reason : "(none)");
    freeReplyObject(r);
    receiver_stop(&rv);
}

/* A receiver that accepts and reads but never answers: after
 * NOTIFY_BREAKER_AFTER calls in a row ran into NOTIFY_TIMEOUT_MS, the worker
 * stops calling it for NOTIFY_BREAKER_OPEN_MS, and every other notification
 * is still logged at once instead of waiting a timeout each; once the
 * receiver answers, the trial call closes the breaker and every
 * notification lands exactly once, none parked. */
Test(notification, hanging_webhook_opens_the_breaker_then_every_notification_lands_once)
{
    enum { N = 6, AFTER = 2 };
    receiver rv;
    receiver_start(&rv, 0, 200);
    atomic_store(&rv.hang, true);
    char url[128];
    snprintf(url, sizeof url, "NOTIFY_WEBHOOK_URL=http://127.0.0.1:%d/hook", rv.port);
    const char *env[] = {url, "NOTIFY_TIMEOUT_MS=300", "NOTIFY_BREAKER_AFTER=2", "NOTIFY_BREAKER_OPEN_MS=8000",
                         "RETRY_BASE_MS=50", "RETRY_MAX_MS=300", NULL};
    sg_spawn(&E, "notification", env);
    markers m = {.n = N, .field = "webhook_status", .at_least = 200};
    for (int i = 0; i < N; i++) {
        snprintf(m.ids[i], sizeof m.ids[i], "co-hang-%d", i);
        sx_saga(E.s, i % 2 ? SX_NO_STOCK : SX_SUCCESS, m.ids[i], "c1", "p1", 1);
    }
    /* every notification is logged although the webhook hangs ... */
    bool logged = sx_wait_ll(E.c, LOG_KEY, NULL, N, WAIT_MS);
    if (!logged)
        sg_dump_logs(&E);
    cr_assert(logged, "the notifications were not all logged while the webhook hung");
    /* ... with only the calls that opened the breaker made (without it, each
     * logged notification would have been POSTed and waited for) */
    cr_assert_eq(receiver_calls(&rv), AFTER, "%d calls reached the hanging webhook, expected %d", receiver_calls(&rv),
                 AFTER);
    long long open = sg_ll(&E, "EXISTS %s.dlq.%s", BUS, GROUP);
    cr_assert_eq(open, 0, "a notification was dead-lettered while the breaker was open");

    atomic_store(&rv.hang, false);   /* the receiver answers 200 from now on */
    bool ok = tf_wait_until(markers_reach, &m, 8000 + WAIT_MS);
    if (!ok)
        sg_dump_logs(&E);
    cr_assert(ok, "not every notification was delivered once the webhook answered");
    wait_idle();
    for (int i = 0; i < N; i++) {
        int answered = 0;
        pthread_mutex_lock(&rv.mu);
        for (int c = 0; c < rv.ncalls; c++)
            answered += !rv.calls[c].hung && !strcmp(rv.calls[c].idem, m.ids[i]);
        pthread_mutex_unlock(&rv.mu);
        cr_assert_eq(answered, 1, "%s was answered %d times", m.ids[i], answered);
    }
    cr_assert_eq(sg_dlq_len(&E, GROUP), 0, "a notification was dead-lettered");
    cr_assert_eq(sg_ll(&E, "XLEN %s", LOG_KEY), N);
    receiver_stop(&rv);
}
