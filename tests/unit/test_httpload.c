/* test_httpload.c - the benches' load generator (bench/httpload.c) against a
 * small HTTP server of this file on a loopback socket: a request whose
 * kept-alive connection closes before any byte of its answer is sent again
 * once when the requests may be (resend_unanswered), else it is an error;
 * a connection that closes before its first answer is an error either way. */
#include "bench/httpload.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The server: connections one at a time; connection number `drop_conn`
 * (0-based) is closed, unanswered, when its request number `drop_req`
 * arrives; every other request gets a 202. */
typedef struct server {
    int lfd, port;
    int drop_conn, drop_req;
    atomic_bool stop;
    atomic_int conns, answered;
    pthread_t thread;
} server;

static bool read_request(int fd, const atomic_bool *stop)
{
    char buf[4096];
    size_t len = 0;
    while (!atomic_load(stop)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        ssize_t n = read(fd, buf + len, sizeof buf - len - 1);
        if (n <= 0)
            return false;
        len += (size_t)n;
        buf[len] = '\0';
        if (strstr(buf, "\r\n\r\n"))
            return true;
        if (len >= sizeof buf - 1)
            return false;
    }
    return false;
}

static void *server_main(void *arg)
{
    server *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = s->lfd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        int conn = atomic_fetch_add(&s->conns, 1);
        for (int req = 0; read_request(fd, &s->stop); req++) {
            if (conn == s->drop_conn && req == s->drop_req)
                break;   /* closed with the request unanswered */
            static const char ok[] = "HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok";
            if (write(fd, ok, sizeof ok - 1) != (ssize_t)(sizeof ok - 1))
                break;
            atomic_fetch_add(&s->answered, 1);
        }
        close(fd);
    }
    return NULL;
}

static void server_start(server *s, int drop_conn, int drop_req)
{
    memset(s, 0, sizeof *s);
    s->drop_conn = drop_conn;
    s->drop_req = drop_req;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(s->lfd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(s->lfd, 16), 0);
    socklen_t al = sizeof a;
    cr_assert_eq(getsockname(s->lfd, (struct sockaddr *)&a, &al), 0);
    s->port = ntohs(a.sin_port);
    cr_assert_eq(pthread_create(&s->thread, NULL, server_main, s), 0);
}

static void server_stop(server *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->thread, NULL);
    close(s->lfd);
}

static size_t build_get(void *ud, uint64_t seq, char *out, size_t cap)
{
    (void)ud;
    return (size_t)snprintf(out, cap, "GET /r/%llu HTTP/1.1\r\nHost: t\r\n\r\n", (unsigned long long)seq);
}

/* One connection, closed loop, for a short while. */
static hl_result run_load(int port, bool resend)
{
    hl_config cfg = {.port = port, .conns = 1, .duration_ms = 300, .timeout_ms = 5000, .expect_status = 202,
                     .build = build_get, .resend_unanswered = resend};
    hl_result res;
    char err[256];
    cr_assert_eq(hl_run(&cfg, &res, err, sizeof err), 0, "%s", err);
    return res;
}

Test(httpload, a_kept_alive_connection_closed_unanswered_is_resent_once_when_allowed)
{
    server s;
    server_start(&s, 0, 1);   /* the first connection drops its second request */
    hl_result res = run_load(s.port, true);
    server_stop(&s);
    cr_expect_eq(res.errors, 0, "errors %llu", (unsigned long long)res.errors);
    cr_expect_eq(res.resent, 1, "resent %llu", (unsigned long long)res.resent);
    cr_expect_gt(res.sent, 2);
    cr_expect_eq(res.ok, res.sent, "every request sent is answered 202: %llu of %llu", (unsigned long long)res.ok,
                 (unsigned long long)res.sent);
    cr_expect_geq(atomic_load(&s.conns), 2);
}

Test(httpload, a_kept_alive_connection_closed_unanswered_is_an_error_otherwise)
{
    server s;
    server_start(&s, 0, 1);
    hl_result res = run_load(s.port, false);
    server_stop(&s);
    cr_expect_eq(res.errors, 1, "errors %llu", (unsigned long long)res.errors);
    cr_expect_eq(res.resent, 0);
    cr_expect_eq(res.ok + 1, res.sent, "all but the dropped request answered: %llu of %llu",
                 (unsigned long long)res.ok, (unsigned long long)res.sent);
}

Test(httpload, a_connection_closed_before_its_first_answer_is_an_error_even_when_resending)
{
    server s;
    server_start(&s, 0, 0);   /* the first connection drops its first request: not a kept-alive race */
    hl_result res = run_load(s.port, true);
    server_stop(&s);
    cr_expect_eq(res.errors, 1, "errors %llu", (unsigned long long)res.errors);
    cr_expect_eq(res.resent, 0);
    cr_expect_eq(res.ok + 1, res.sent);
}
