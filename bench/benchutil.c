/* benchutil.c - /proc readings and sibling-binary paths for the benchmarks. */
#include "bench/benchutil.h"
#include "tests/support/proc.h"

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

pid_t bu_start_api(int *port, pid_t (*start)(void *ud), bool (*ready)(void *ud), void *ud, int timeout_ms)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        *port = tf_free_port();
        pid_t pid = start(ud);
        if (pid <= 0)
            return -1;
        if (tf_wait_until(ready, ud, timeout_ms))
            return pid;
        tf_kill(pid, SIGKILL);
        tf_wait_exit(pid, 5000, NULL);
    }
    return 0;
}
