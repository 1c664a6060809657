/* benchutil.h - process measurements and paths shared by the benchmarks. */
#ifndef BENCH_BENCHUTIL_H
#define BENCH_BENCHUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

/* CPU seconds (user + system) used so far by process pid; 0 if unknown. */
double bu_cpu_seconds(pid_t pid);
/* CPU seconds used so far by this process (the load generator). */
double bu_self_cpu(void);
/* VmRSS of pid in MiB, or -1. */
double bu_rss_mib(pid_t pid);
/* Writes "<dir of this executable>/<rel>" into out; 0 if it is executable. */
int bu_bin_path(const char *rel, char *out, size_t outlen);

/* Starts the API: *port is set to a fresh free port, then start(ud) runs
 * it; when it exits before ready(ud) is true (another process took the port
 * meanwhile), it is reaped and tried again on another port, 5 times at
 * most; when it runs but ready(ud) stays false for timeout_ms, it is killed
 * and not tried again. Returns its pid; 0 when it never became ready (the
 * caller shows its log), -1 when it could not be run (errno says why). */
pid_t bu_start_api(int *port, pid_t (*start)(void *ud), bool (*ready)(void *ud), void *ud, int timeout_ms);

/* Copies the last non-empty line of the file at path into out (no newline;
 * only its "message" when it is a JSON log record; "(empty log)" or
 * "(no log)" when there is none): a one-line reason. */
void bu_last_line(const char *path, char *out, size_t outlen);

/* The integer after `field` (e.g. "used_memory:") in c's INFO section, or -1. */
long long bu_info_ll(redisContext *c, const char *section, const char *field);

/* Reads PARTITIONS from the environment (dflt when unset or empty) and
 * applies it to this process (common/names.h: cm_key_bus and friends).
 * Returns the count, or -1 with the reason in err (not a number, out of
 * 1..CM_PARTITIONS_MAX). */
int bu_partitions(int dflt, char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
