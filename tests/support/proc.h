/* proc.h - child processes for tests: spawn with extra env, signal, reap,
 * and poll a condition against a deadline.
 *
 * Every child is tied to the process that spawned it: it gets a parent-death
 * signal (PR_SET_PDEATHSIG), so a test that crashes, times out or is killed
 * takes its children with it. Linux delivers that signal when the *thread*
 * that forked exits, so spawn from the test's main thread (criterion runs
 * test bodies there). Each child leads its own process group.
 *
 * This file does not use criterion: benches may link it too. */
#ifndef TF_PROC_H
#define TF_PROC_H

#include <stdbool.h>
#include <sys/types.h>

/* Starts argv[0] (searched in PATH when it has no '/') with argv, the
 * current environment plus env ("K=V" strings, NULL-terminated, may be NULL;
 * a K already set is replaced), stdin from /dev/null and stdout+stderr
 * appended to logpath (NULL: inherited). The child receives SIGKILL when the
 * spawning thread dies. Returns the child's pid, or -1 with errno set when
 * the program cannot be found or exec'd (nothing is left running then). */
pid_t tf_spawn(const char *const argv[], const char *const env[], const char *logpath);

/* As tf_spawn, with deathsig sent to the child when its parent dies instead
 * of SIGKILL (SIGTERM lets a wrapper like timeout(1) pass it on). */
pid_t tf_spawn_sig(const char *const argv[], const char *const env[], const char *logpath,
                   int deathsig);

/* Sends sig to the child's process group (so helpers it started get it too),
 * or to pid alone if it leads none. Returns 0, or -1 with errno (ESRCH when
 * it is already gone). */
int tf_kill(pid_t pid, int sig);

/* Waits up to timeout_ms for child pid to exit and reaps it, storing its
 * waitpid status in *status (may be NULL). Returns 0 once reaped, -1 with
 * errno ETIMEDOUT if it still runs (it is left running), or -1 with errno
 * from waitpid (ECHILD: not our child or already reaped). */
int tf_wait_exit(pid_t pid, int timeout_ms, int *status);

/* Polls cond(ud) every 10 ms until it returns true (returns true) or
 * timeout_ms has passed (returns false, after one last check). */
bool tf_wait_until(bool (*cond)(void *ud), void *ud, int timeout_ms);

/* How many lines of the file at path contain a, and b too unless b is
 * NULL; -1 when the file cannot be opened. For reading logs in tests. */
int tf_file_count(const char *path, const char *a, const char *b);

/* A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read
 * it back, close). Another process may take it before you do: callers retry
 * on EADDRINUSE. Returns the port, or -1 with errno. */
int tf_free_port(void);

/* Copies the file at path to stderr between two marker lines, for a failing
 * test's diagnostics. A missing file is reported, not an error. */
void tf_dump_file(const char *path, const char *title);

/* Milliseconds of CLOCK_MONOTONIC, for deadlines. */
long long tf_now_ms(void);

/* Sleeps ms milliseconds (restarting on EINTR). */
void tf_sleep_ms(int ms);

#endif
