/* benchutil.c - /proc readings and sibling-binary paths for the benchmarks. */
#include "bench/benchutil.h"
#include "common/names.h"
#include "tests/support/proc.h"

#include <errno.h>

#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

double bu_cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');   /* the command name may hold spaces */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

double bu_self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

double bu_rss_mib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    double v = -1;
    if (!f)
        return v;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            v = atof(line + 6) / 1024.0;
    fclose(f);
    return v;
}

int bu_bin_path(const char *rel, char *out, size_t outlen)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    snprintf(out, outlen, "%s/%s", dirname(self), rel);
    return access(out, X_OK);
}

/* What bu_start_api waits for: the caller's readiness, or the exit. */
typedef struct start_wait {
    bool (*ready)(void *ud);
    void *ud;
    pid_t pid;
    bool exited;   /* reaped */
} start_wait;

static bool ready_or_exited(void *arg)
{
    start_wait *w = arg;
    if (tf_wait_exit(w->pid, 0, NULL) == 0) {
        w->exited = true;
        return true;
    }
    return w->ready(w->ud);
}

pid_t bu_start_api(int *port, pid_t (*start)(void *ud), bool (*ready)(void *ud), void *ud, int timeout_ms)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        *port = tf_free_port();
        start_wait w = {.ready = ready, .ud = ud};
        if ((w.pid = start(ud)) <= 0)
            return -1;
        if (tf_wait_until(ready_or_exited, &w, timeout_ms) && !w.exited)
            return w.pid;
        if (!w.exited) {
            /* running and never ready: its own port, so another would not help */
            tf_kill(w.pid, SIGKILL);
            tf_wait_exit(w.pid, 5000, NULL);
            break;
        }
    }
    return 0;
}

void bu_last_line(const char *path, char *out, size_t outlen)
{
    char line[1024];
    FILE *f = fopen(path, "r");
    snprintf(out, outlen, "%s", f ? "(empty log)" : "(no log)");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0])
            snprintf(out, outlen, "%s", line);
    }
    fclose(f);
    /* a JSON log record (common/log.h): its message says it */
    const char *m = strstr(out, "\"message\":\"");
    if (out[0] == '{' && m) {
        m += strlen("\"message\":\"");
        size_t n = strcspn(m, "\"");
        memmove(out, m, n);
        out[n] = '\0';
    }
}

long long bu_info_ll(redisContext *c, const char *section, const char *field)
{
    redisReply *r = redisCommand(c, "INFO %s", section);
    long long v = -1;
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *p = strstr(r->str, field);
        if (p)
            v = atoll(p + strlen(field));
    }
    freeReplyObject(r);
    return v;
}

int bu_partitions(int dflt, char *err, size_t errlen)
{
    const char *v = getenv("PARTITIONS");
    long long n = dflt;
    if (v && *v) {
        char *end = NULL;
        errno = 0;
        n = strtoll(v, &end, 10);
        if (errno || *end) {
            snprintf(err, errlen, "PARTITIONS must be a number 1..%d, not '%s'", CM_PARTITIONS_MAX, v);
            return -1;
        }
    }
    if (cm_partitions_configure(n, CM_BUS_STREAM_DEFAULT, err, errlen) != 0)
        return -1;
    return (int)n;
}
