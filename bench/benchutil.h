/* benchutil.h - process measurements and paths shared by the benchmarks. */
#ifndef BENCH_BENCHUTIL_H
#define BENCH_BENCHUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* CPU seconds (user + system) used so far by process pid; 0 if unknown. */
double bu_cpu_seconds(pid_t pid);
/* CPU seconds used so far by this process (the load generator). */
double bu_self_cpu(void);
/* VmRSS of pid in MiB, or -1. */
double bu_rss_mib(pid_t pid);
/* Writes "<dir of this executable>/<rel>" into out; 0 if it is executable. */
int bu_bin_path(const char *rel, char *out, size_t outlen);

/* Starts the API: *port is set to a fresh free port, then start(ud) runs
 * it; when ready(ud) stays false for timeout_ms (another process took the
 * port meanwhile) it is killed and tried again on another port, 5 times at
 * most. Returns its pid; 0 when it never answered (the caller shows its
 * log), -1 when it could not be run (errno says why). */
pid_t bu_start_api(int *port, pid_t (*start)(void *ud), bool (*ready)(void *ud), void *ud, int timeout_ms);

#endif
