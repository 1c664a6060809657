/* redis_fixture.h - a private redis-server per test.
 *
 * tf_redis_start makes a temp dir under /tmp, writes a redis.conf there
 * (127.0.0.1, a bind-probed free port, no RDB snapshots, log in the dir),
 * and runs `timeout -k 3 1800 redis-server redis.conf`, so no server outlives
 * a crashed or hung test: the wrapper gets SIGTERM when the test process
 * dies and passes it on, and gives up on its own after 30 minutes. Starting
 * takes a few milliseconds; every test can have its own server, which keeps
 * criterion's parallel test processes independent.
 *
 * Usage:
 *     tf_redis r;
 *     cr_assert_eq(tf_redis_start(&r, "appendonly yes\n"), 0);
 *     redisContext *c = tf_redis_connect(&r);
 *     ...
 *     redisFree(c);
 *     tf_redis_stop(&r);
 *
 * This file does not use criterion: benches may link it too. */
#ifndef TF_REDIS_FIXTURE_H
#define TF_REDIS_FIXTURE_H

#include <hiredis/hiredis.h>
#include <sys/types.h>

typedef struct tf_redis {
    pid_t pid;           /* the timeout(1) wrapper; its child is the server; 0 when stopped */
    int port;            /* TCP port on 127.0.0.1 */
    char dir[256];       /* temp dir: redis.conf, redis.log, data files */
    char url[300];       /* "redis://127.0.0.1:<port>", for REDIS_URL */
    char logpath[300];   /* the server's log (also the wrapper's stdout/stderr) */
    pid_t server_pid;    /* redis-server itself, read from INFO once it answers */
    char auth_user[64];  /* what the fixture's own connections AUTH with ("" : none) */
    char auth_pass[128];
} tf_redis;

/* Starts a server in a new temp dir. extra_conf (NULL or redis.conf lines,
 * e.g. "appendonly yes\nappendfsync always\n") is appended to the config.
 * Retries with another port (up to 5 tries) when the probed port was taken.
 * Returns 0 once the server answers PING (within 10 s), or -1 after dumping
 * the server's log to stderr; nothing is left running or on disk then. */
int tf_redis_start(tf_redis *r, const char *extra_conf) __attribute__((warn_unused_result));

/* As tf_redis_start, for a server that needs a password: extra_conf sets it
 * up (e.g. "requirepass ..." or an ACL "user ..." line) and the fixture's
 * own connections (readiness probe, tf_redis_connect) send AUTH pass, or
 * AUTH user pass when user is not NULL. r->url stays without credentials:
 * tests build the URL they want to try. */
int tf_redis_start_auth(tf_redis *r, const char *extra_conf, const char *user, const char *pass)
    __attribute__((warn_unused_result));

/* Stops the server (SIGTERM, SIGKILL after 3 s), reaps it and removes its
 * temp dir. Safe on a stopped or zeroed fixture; r can be started again. */
void tf_redis_stop(tf_redis *r);

/* SIGKILLs the server (no shutdown, no final fsync) and reaps it; the dir,
 * its data files and the port number are kept for tf_redis_restart.
 * Returns 0, or -1 if no server was running. */
int tf_redis_kill9(tf_redis *r) __attribute__((warn_unused_result));

/* Starts the server again on the same port, dir and redis.conf (after
 * tf_redis_kill9, or while running: then it is stopped gracefully first) and
 * waits until it answers, i.e. has loaded its AOF/RDB. Returns 0 or -1 after
 * dumping the log. */
int tf_redis_restart(tf_redis *r) __attribute__((warn_unused_result));

/* Connects to the server (5 s to connect, 30 s per command). Never returns
 * NULL: on failure it prints why and the server log, then aborts the test.
 * The caller frees the context with redisFree. */
redisContext *tf_redis_connect(const tf_redis *r);

/* Calls of command cmd (lower case, e.g. "hgetall") on c's server since its
 * last CONFIG RESETSTAT, from INFO commandstats: 0 when it never ran, -1
 * when INFO failed. */
long long tf_redis_command_calls(redisContext *c, const char *cmd);

/* Copies the value of `field:` from an INFO-style reply ("field:value"
 * lines, as INFO and CLUSTER INFO send) into out ("" if absent). */
void tf_info_field(const char *info, const char *field, char *out, size_t outlen);

/* Prints the server log to stderr (for a failing test's diagnostics). */
void tf_redis_dump_log(const tf_redis *r);

#endif
