/* test_fixture.c - the redis-server fixture keeps its promises: a private
 * server per test that answers on its URL, applies extra config, survives
 * kill -9 with AOF, loses data without it, cleans up after itself, and never
 * outlives the process that started it. */
#include "common/redis.h"
#include "tests/support/proc.h"
#include "tests/support/redis_fixture.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs one command and returns its reply (caller frees); asserts it came. */
static redisReply *cmd(redisContext *c, const char *fmt, const char *arg)
{
    redisReply *r = arg ? redisCommand(c, fmt, arg) : redisCommand(c, fmt);
    cr_assert_not_null(r, "%s: %s", fmt, c->errstr);
    return r;
}

static bool dir_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* True if pid is gone (or a zombie nobody reaped: it holds no resources). */
static bool pid_gone(void *ud)
{
    pid_t pid = *(pid_t *)ud;
    char path[64], state = '?';
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    /* "pid (comm) S ..." - comm may contain spaces; the state follows the last ')' */
    char buf[512];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    if (rp && rp[1] == ' ')
        state = rp[2];
    return state == 'Z' || state == 'X';
}

static bool port_refuses(const tf_redis *r)
{
    struct timeval tv = {.tv_sec = 1, .tv_usec = 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    bool refused = !c || c->err;
    redisFree(c);
    return refused;
}

Test(fixture, started_server_answers_ping_on_its_url_and_stop_cleans_up)
{
    tf_redis r;
    cr_assert_eq(tf_redis_start(&r, NULL), 0);
    cr_assert_gt(r.port, 0);
    cr_assert_gt(r.pid, 0);
    cr_assert_gt(r.server_pid, 0);
    cr_assert(dir_exists(r.dir), "%s", r.dir);
    char want[64];
    snprintf(want, sizeof want, "redis://127.0.0.1:%d", r.port);
    cr_assert_str_eq(r.url, want);

    redisContext *c = tf_redis_connect(&r);
    redisReply *pong = cmd(c, "PING", NULL);
    cr_assert_str_eq(pong->str, "PONG");
    freeReplyObject(pong);
    redisFree(c);

    char err[256] = "";
    redisContext *c2 = cm_redis_connect(r.url, 2000, err, sizeof err);   /* the URL works as REDIS_URL */
    cr_assert_not_null(c2, "%s", err);
    redisFree(c2);

    char dir[256];
    pid_t server = r.server_pid;
    snprintf(dir, sizeof dir, "%s", r.dir);
    tf_redis_stop(&r);
    cr_assert_eq(r.pid, 0);
    cr_assert_not(dir_exists(dir), "%s left behind", dir);
    cr_assert(pid_gone(&server), "server %d still running", (int)server);
    tf_redis_stop(&r);   /* idempotent */
}

Test(fixture, extra_conf_lines_are_applied)
{
    tf_redis r;
    cr_assert_eq(tf_redis_start(&r, "maxmemory 12345678\nhz 25"), 0);   /* no trailing newline on purpose */
    redisContext *c = tf_redis_connect(&r);
    redisReply *v = cmd(c, "CONFIG GET %s", "maxmemory");
    cr_assert_eq(v->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(v->elements, 2);
    cr_assert_str_eq(v->element[1]->str, "12345678");
    freeReplyObject(v);
    v = cmd(c, "CONFIG GET %s", "hz");
    cr_assert_str_eq(v->element[1]->str, "25");
    freeReplyObject(v);
    redisFree(c);
    tf_redis_stop(&r);
}

Test(fixture, aof_keeps_an_acknowledged_key_across_kill9_and_restart)
{
    tf_redis r;
    cr_assert_eq(tf_redis_start(&r, "appendonly yes\nappendfsync always\n"), 0);
    redisContext *c = tf_redis_connect(&r);
    freeReplyObject(cmd(c, "SET chorus:k %s", "survives"));
    redisFree(c);

    int port = r.port;
    pid_t old = r.server_pid;
    cr_assert_eq(tf_redis_kill9(&r), 0);
    cr_assert(pid_gone(&old), "server %d survived SIGKILL", (int)old);
    cr_assert(port_refuses(&r), "something still answers on %d", port);

    cr_assert_eq(tf_redis_restart(&r), 0);
    cr_assert_eq(r.port, port, "restart keeps the port");
    cr_assert_neq(r.server_pid, old);
    c = tf_redis_connect(&r);
    redisReply *v = cmd(c, "GET chorus:k", NULL);
    cr_assert_eq(v->type, REDIS_REPLY_STRING, "key lost across kill -9 with AOF");
    cr_assert_str_eq(v->str, "survives");
    freeReplyObject(v);
    redisFree(c);
    tf_redis_stop(&r);
}

Test(fixture, kill9_without_persistence_really_loses_data)
{
    /* Proves kill9 is a crash, not a graceful shutdown that saves. */
    tf_redis r;
    cr_assert_eq(tf_redis_start(&r, NULL), 0);
    redisContext *c = tf_redis_connect(&r);
    freeReplyObject(cmd(c, "SET chorus:k %s", "gone"));
    redisFree(c);
    cr_assert_eq(tf_redis_kill9(&r), 0);
    cr_assert_eq(tf_redis_restart(&r), 0);
    c = tf_redis_connect(&r);
    redisReply *v = cmd(c, "GET chorus:k", NULL);
    cr_assert_eq(v->type, REDIS_REPLY_NIL);
    freeReplyObject(v);
    redisFree(c);
    tf_redis_stop(&r);
}

Test(fixture, restart_of_a_running_server_is_graceful)
{
    tf_redis r;
    cr_assert_eq(tf_redis_start(&r, "appendonly yes\n"), 0);
    redisContext *c = tf_redis_connect(&r);
    freeReplyObject(cmd(c, "RPUSH chorus:l %s", "a"));
    redisFree(c);
    cr_assert_eq(tf_redis_restart(&r), 0);
    c = tf_redis_connect(&r);
    redisReply *v = cmd(c, "LLEN chorus:l", NULL);
    cr_assert_eq(v->integer, 1);
    freeReplyObject(v);
    redisFree(c);
    tf_redis_stop(&r);
}

Test(fixture, two_fixtures_are_isolated)
{
    tf_redis a, b;
    cr_assert_eq(tf_redis_start(&a, NULL), 0);
    cr_assert_eq(tf_redis_start(&b, NULL), 0);
    cr_assert_neq(a.port, b.port);
    cr_assert_str_neq(a.dir, b.dir);
    redisContext *ca = tf_redis_connect(&a), *cb = tf_redis_connect(&b);
    freeReplyObject(cmd(ca, "SET only-in %s", "a"));
    redisReply *v = cmd(cb, "EXISTS only-in", NULL);
    cr_assert_eq(v->integer, 0);
    freeReplyObject(v);
    redisFree(ca);
    redisFree(cb);
    tf_redis_stop(&a);
    tf_redis_stop(&b);
}

Test(fixture, start_is_fast_enough_for_one_server_per_test)
{
    enum { N = 5 };
    long long t0 = tf_now_ms();
    for (int i = 0; i < N; i++) {
        tf_redis r;
        cr_assert_eq(tf_redis_start(&r, NULL), 0);
        tf_redis_stop(&r);
    }
    long long per = (tf_now_ms() - t0) / N;
    cr_log_info("start+stop: %lld ms each", per);
    cr_assert_lt(per, 2000, "start+stop took %lld ms", per);   /* generous: CI under ASan */
}

Test(fixture, server_dies_when_the_test_process_dies)
{
    /* A child plays the test: it starts a server, reports it, then is
     * SIGKILLed, with no chance to clean up. The server must go too. */
    int pfd[2];
    cr_assert_eq(pipe(pfd), 0);
    pid_t test = fork();
    cr_assert_neq(test, -1);
    if (test == 0) {
        close(pfd[0]);
        tf_redis r;
        if (tf_redis_start(&r, NULL) != 0)
            _exit(1);
        ssize_t w = write(pfd[1], &r, sizeof r);
        (void)w;
        pause();
        _exit(0);
    }
    close(pfd[1]);
    tf_redis r;
    ssize_t n = read(pfd[0], &r, sizeof r);
    close(pfd[0]);
    cr_assert_eq(n, (ssize_t)sizeof r, "child could not start a server");
    cr_assert_eq(kill(test, SIGKILL), 0);
    cr_assert_eq(waitpid(test, NULL, 0), test);

    pid_t server = r.server_pid, wrapper = r.pid;
    cr_assert(tf_wait_until(pid_gone, &server, 10000), "redis-server %d outlived its test", (int)server);
    cr_assert(tf_wait_until(pid_gone, &wrapper, 10000), "timeout wrapper %d outlived its test", (int)wrapper);
    /* the child could not remove its dir: do it here (not our child, so no kill) */
    r.pid = 0;
    r.server_pid = 0;
    tf_redis_stop(&r);
}
