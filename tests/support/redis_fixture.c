/* redis_fixture.c - start, kill, restart and clean up a private redis-server.
 *
 * Process tree: test -> timeout(1) -> redis-server. The wrapper leads its own
 * process group and gets SIGTERM if the test dies (tf_spawn_sig); timeout
 * passes that on to the server and SIGKILLs it 3 s later if it lingers.
 * tf_redis_kill9 SIGKILLs the server itself, not the wrapper, so the wrapper
 * reaps it: once the wrapper has exited the server is gone and its port free,
 * and no orphan is left for init to collect.
 *
 * A probed port can be taken by someone else between the probe and the
 * server's bind. Two symptoms are handled: our server exits with "Address
 * already in use" in its log, or a foreign server answers on the port. The
 * latter is told apart by INFO's config_file, which names our redis.conf. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* pipe2, nftw: also set by the build, this keeps the file standalone */
#endif
#include "tests/support/redis_fixture.h"
#include "tests/support/proc.h"

#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

enum {
    START_TRIES = 5,          /* ports tried by tf_redis_start */
    READY_TIMEOUT_MS = 10000, /* from spawn until PING answers */
    STOP_GRACE_MS = 3000,     /* SIGTERM -> SIGKILL */
    WRAPPER_SECONDS = 1800,   /* timeout(1) limit: no server outlives a hung test */
};

static const char k_dir_prefix[] = "/tmp/chorus-redis-";

static void conf_path(const tf_redis *r, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/redis.conf", r->dir);
}

/* Writes dir/redis.conf for r->port. Returns 0 or -1 (reason on stderr). */
static int write_conf(const tf_redis *r, const char *extra)
{
    char path[320];
    conf_path(r, path, sizeof path);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "tf_redis: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f,
            "# written by tests/support/redis_fixture.c\n"
            "bind 127.0.0.1\n"
            "port %d\n"
            "protected-mode yes\n"
            "daemonize no\n"
            "dir \"%s\"\n"
            "logfile \"%s\"\n"
            "save \"\"\n"
            "appendonly no\n",
            r->port, r->dir, r->logpath);
    if (extra && *extra) {
        fputs(extra, f);
        if (extra[strlen(extra) - 1] != '\n')
            fputc('\n', f);
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "tf_redis: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* True if the log, from byte offset `from`, says the port was taken. */
static bool log_says_port_taken(const tf_redis *r, long from)
{
    FILE *f = fopen(r->logpath, "r");
    if (!f)
        return false;
    bool taken = false;
    char line[1024];
    if (fseek(f, from, SEEK_SET) == 0) {
        while (!taken && fgets(line, sizeof line, f))
            taken = strstr(line, "Address already in use") != NULL;
    }
    fclose(f);
    return taken;
}

void tf_info_field(const char *info, const char *field, char *out, size_t outlen)
{
    out[0] = '\0';
    size_t flen = strlen(field);
    const char *p = info;
    while (p && *p) {
        if (!strncmp(p, field, flen) && p[flen] == ':') {
            const char *v = p + flen + 1;
            size_t n = strcspn(v, "\r\n");
            if (n >= outlen)
                n = outlen - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
}

enum probe { PROBE_NOT_YET, PROBE_READY, PROBE_FOREIGN };

/* AUTHs c as the fixture's user when one is set. Returns false on refusal. */
static bool fixture_auth(const tf_redis *r, redisContext *c)
{
    if (!r->auth_pass[0])
        return true;
    redisReply *a = r->auth_user[0] ? redisCommand(c, "AUTH %s %s", r->auth_user, r->auth_pass)
                                    : redisCommand(c, "AUTH %s", r->auth_pass);
    bool ok = a && a->type == REDIS_REPLY_STATUS;
    if (a)
        freeReplyObject(a);
    return ok;
}

/* One readiness check: is *our* server up and done loading? On READY, sets
 * r->server_pid. */
static enum probe probe_server(tf_redis *r)
{
    struct timeval tv = {.tv_sec = 0, .tv_usec = 500 * 1000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    if (!c || c->err) {
        redisFree(c);
        return PROBE_NOT_YET;
    }
    redisSetTimeout(c, tv);
    enum probe res = PROBE_NOT_YET;
    if (!fixture_auth(r, c)) {
        redisFree(c);
        return PROBE_NOT_YET;
    }
    redisReply *info = redisCommand(c, "INFO server");   /* answered even while loading */
    if (info && info->type == REDIS_REPLY_STRING) {
        char want[320], got[320], pid[32];
        conf_path(r, want, sizeof want);
        tf_info_field(info->str, "config_file", got, sizeof got);
        tf_info_field(info->str, "process_id", pid, sizeof pid);
        if (strcmp(want, got) != 0) {
            res = PROBE_FOREIGN;
        } else {
            redisReply *pong = redisCommand(c, "PING");   /* -LOADING until data is in */
            if (pong && pong->type == REDIS_REPLY_STATUS && !strcmp(pong->str, "PONG")) {
                r->server_pid = (pid_t)atol(pid);
                res = PROBE_READY;
            }
            if (pong)
                freeReplyObject(pong);
        }
    }
    if (info)
        freeReplyObject(info);
    redisFree(c);
    return res;
}

/* Stops the wrapper and its server: SIGTERM (passed on by timeout), then
 * SIGKILL to the whole group after the grace period. Keeps the dir. */
static void stop_wrapper(tf_redis *r, int grace_ms)
{
    if (r->pid <= 0)
        return;
    if (kill(r->pid, SIGTERM) != 0 || tf_wait_exit(r->pid, grace_ms, NULL) != 0) {
        tf_kill(r->pid, SIGKILL);
        if (r->server_pid > 0)
            kill(r->server_pid, SIGKILL);
        tf_wait_exit(r->pid, 5000, NULL);
    }
    r->pid = 0;
    r->server_pid = 0;
}

/* Spawns the server on r's conf and waits until it answers. Returns 0; or -1
 * with *port_taken telling whether another port (or a later retry) may help.
 * Nothing is left running on failure. */
static int launch(tf_redis *r, bool *port_taken)
{
    *port_taken = false;
    char conf[320], secs[16];
    conf_path(r, conf, sizeof conf);
    snprintf(secs, sizeof secs, "%d", WRAPPER_SECONDS);
    const char *server = getenv("TF_REDIS_SERVER");
    const char *argv[] = {"timeout", "-k", "3", secs, server && *server ? server : "redis-server",
                          conf, NULL};
    long log_from = file_size(r->logpath);

    r->server_pid = 0;
    r->pid = tf_spawn_sig(argv, NULL, r->logpath, SIGTERM);
    if (r->pid < 0) {
        fprintf(stderr, "tf_redis: cannot run timeout/redis-server: %s\n", strerror(errno));
        r->pid = 0;
        return -1;
    }
    long long deadline = tf_now_ms() + READY_TIMEOUT_MS;
    int nap = 1;
    for (;;) {
        int st;
        if (waitpid(r->pid, &st, WNOHANG) == r->pid) {   /* the server gave up */
            r->pid = 0;
            *port_taken = log_says_port_taken(r, log_from);
            if (!*port_taken)
                fprintf(stderr, "tf_redis: redis-server on port %d exited (status 0x%x)\n", r->port, st);
            return -1;
        }
        switch (probe_server(r)) {
        case PROBE_READY:
            return 0;
        case PROBE_FOREIGN:
            stop_wrapper(r, STOP_GRACE_MS);
            *port_taken = true;
            return -1;
        case PROBE_NOT_YET:
            break;
        }
        if (tf_now_ms() > deadline) {
            fprintf(stderr, "tf_redis: redis-server on port %d did not answer within %d ms\n", r->port,
                    READY_TIMEOUT_MS);
            stop_wrapper(r, STOP_GRACE_MS);
            return -1;
        }
        tf_sleep_ms(nap);
        if (nap < 20)
            nap *= 2;
    }
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* Removes r->dir recursively; refuses anything but our own temp dirs. */
static void remove_dir(tf_redis *r)
{
    if (!strncmp(r->dir, k_dir_prefix, sizeof k_dir_prefix - 1))
        nftw(r->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    r->dir[0] = '\0';
}

int tf_redis_start(tf_redis *r, const char *extra_conf)
{
    return tf_redis_start_auth(r, extra_conf, NULL, NULL);
}

int tf_redis_start_auth(tf_redis *r, const char *extra_conf, const char *user, const char *pass)
{
    memset(r, 0, sizeof *r);
    snprintf(r->auth_user, sizeof r->auth_user, "%s", user ? user : "");
    snprintf(r->auth_pass, sizeof r->auth_pass, "%s", pass ? pass : "");
    snprintf(r->dir, sizeof r->dir, "%sXXXXXX", k_dir_prefix);
    if (!mkdtemp(r->dir)) {
        fprintf(stderr, "tf_redis: mkdtemp %s: %s\n", r->dir, strerror(errno));
        r->dir[0] = '\0';
        return -1;
    }
    snprintf(r->logpath, sizeof r->logpath, "%s/redis.log", r->dir);
    for (int attempt = 0; attempt < START_TRIES; attempt++) {
        r->port = tf_free_port();
        if (r->port < 0) {
            fprintf(stderr, "tf_redis: cannot probe a free port: %s\n", strerror(errno));
            break;
        }
        snprintf(r->url, sizeof r->url, "redis://127.0.0.1:%d", r->port);
        if (write_conf(r, extra_conf) != 0)
            break;
        bool port_taken;
        if (launch(r, &port_taken) == 0)
            return 0;
        if (!port_taken)
            break;
    }
    tf_redis_dump_log(r);
    remove_dir(r);
    memset(r, 0, sizeof *r);
    return -1;
}

void tf_redis_stop(tf_redis *r)
{
    stop_wrapper(r, STOP_GRACE_MS);
    if (r->dir[0])
        remove_dir(r);
    r->port = 0;
    r->url[0] = '\0';
    r->logpath[0] = '\0';
}

int tf_redis_kill9(tf_redis *r)
{
    if (r->pid <= 0)
        return -1;
    /* Kill the server, let the wrapper reap it and exit (see the top). */
    if (r->server_pid <= 0 || kill(r->server_pid, SIGKILL) != 0)
        tf_kill(r->pid, SIGKILL);
    if (tf_wait_exit(r->pid, 5000, NULL) != 0) {
        tf_kill(r->pid, SIGKILL);
        tf_wait_exit(r->pid, 5000, NULL);
    }
    r->pid = 0;
    r->server_pid = 0;
    return 0;
}

int tf_redis_restart(tf_redis *r)
{
    if (!r->dir[0] || r->port <= 0)
        return -1;
    stop_wrapper(r, STOP_GRACE_MS);
    /* The port was ours a moment ago; if someone grabbed it, waiting may help
     * (a client's ephemeral port), another port would not: tests keep URLs. */
    for (int attempt = 0; attempt < START_TRIES; attempt++) {
        bool port_taken;
        if (launch(r, &port_taken) == 0)
            return 0;
        if (!port_taken)
            break;
        tf_sleep_ms(100 * (attempt + 1));
    }
    tf_redis_dump_log(r);
    return -1;
}

redisContext *tf_redis_connect(const tf_redis *r)
{
    struct timeval conn_tv = {.tv_sec = 5, .tv_usec = 0};
    struct timeval cmd_tv = {.tv_sec = 30, .tv_usec = 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, conn_tv);
    if (c && !c->err && redisSetTimeout(c, cmd_tv) == REDIS_OK && fixture_auth(r, c))
        return c;
    fprintf(stderr, "tf_redis_connect(%s): %s\n", r->url, c ? c->errstr : "out of memory");
    redisFree(c);
    tf_redis_dump_log(r);
    abort();
}

void tf_redis_dump_log(const tf_redis *r)
{
    if (r->logpath[0])
        tf_dump_file(r->logpath, "redis-server log");
}

long long tf_redis_command_calls(redisContext *c, const char *cmd)
{
    redisReply *r = redisCommand(c, "INFO commandstats");
    if (!r || r->type != REDIS_REPLY_STRING) {
        if (r)
            freeReplyObject(r);
        return -1;
    }
    char tag[96];
    snprintf(tag, sizeof tag, "cmdstat_%s:calls=", cmd);
    const char *p = strstr(r->str, tag);
    long long n = p ? atoll(p + strlen(tag)) : 0;
    freeReplyObject(r);
    return n;
}
