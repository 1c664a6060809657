/* test_harness.c - the process harness e2e tests stand on (tests/support/
 * proc.h): children get the extra environment and the log file, their exit
 * is reaped with a deadline, signals reach them, and none outlives the test
 * process that spawned it. */
#include "tests/support/proc.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* True if pid is gone (or a zombie nobody reaped: it holds no resources). */
static bool pid_gone(void *ud)
{
    pid_t pid = *(pid_t *)ud;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    char buf[512];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X');
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    static char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

Test(harness, child_sees_extra_env_replacing_inherited_values)
{
    setenv("TF_REPLACED", "old", 1);
    const char *argv[] = {"sh", "-c", "test \"$TF_ADDED\" = added && test \"$TF_REPLACED\" = new && exit 7",
                          NULL};
    const char *env[] = {"TF_ADDED=added", "TF_REPLACED=new", NULL};
    pid_t pid = tf_spawn(argv, env, NULL);
    cr_assert_gt(pid, 0, "%s", strerror(errno));
    int st = 0;
    cr_assert_eq(tf_wait_exit(pid, 10000, &st), 0);
    cr_assert(WIFEXITED(st));
    cr_assert_eq(WEXITSTATUS(st), 7, "the child did not see the expected environment");
    cr_assert_str_eq(getenv("TF_REPLACED"), "old", "the parent's environment is untouched");
}

Test(harness, stdout_and_stderr_are_appended_to_the_log)
{
    char dir[] = "/tmp/chorus-harness-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char log[128];
    snprintf(log, sizeof log, "%s/child.log", dir);
    const char *argv[] = {"sh", "-c", "echo to-stdout; echo to-stderr >&2; read x || echo stdin-empty", NULL};
    for (int i = 0; i < 2; i++) {
        pid_t pid = tf_spawn(argv, NULL, log);
        cr_assert_gt(pid, 0);
        int st;
        cr_assert_eq(tf_wait_exit(pid, 10000, &st), 0);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    const char *text = slurp(log);
    cr_assert_str_eq(text, "to-stdout\nto-stderr\nstdin-empty\nto-stdout\nto-stderr\nstdin-empty\n");
    unlink(log);
    rmdir(dir);
}

Test(harness, missing_program_is_an_error_of_spawn)
{
    const char *a1[] = {"/nonexistent/chorus-nothing", NULL};
    errno = 0;
    cr_assert_eq(tf_spawn(a1, NULL, NULL), -1);
    cr_assert_eq(errno, ENOENT);
    const char *a2[] = {"chorus-no-such-program-in-path", NULL};
    errno = 0;
    cr_assert_eq(tf_spawn(a2, NULL, NULL), -1);
    cr_assert_eq(errno, ENOENT);
    const char *a3[] = {"/etc/hostname", NULL};   /* exists, not executable */
    cr_assert_eq(tf_spawn(a3, NULL, NULL), -1);
}

Test(harness, wait_exit_times_out_then_a_signal_ends_the_child)
{
    const char *argv[] = {"sleep", "600", NULL};
    pid_t pid = tf_spawn(argv, NULL, NULL);
    cr_assert_gt(pid, 0);
    long long t0 = tf_now_ms();
    errno = 0;
    cr_assert_eq(tf_wait_exit(pid, 100, NULL), -1);
    cr_assert_eq(errno, ETIMEDOUT);
    cr_assert_geq(tf_now_ms() - t0, 100);
    cr_assert_eq(tf_kill(pid, SIGTERM), 0);
    int st;
    cr_assert_eq(tf_wait_exit(pid, 10000, &st), 0);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "status 0x%x", st);
    errno = 0;
    cr_assert_eq(tf_kill(pid, SIGTERM), -1, "signalled a reaped pid");
    cr_assert_eq(tf_kill(0, SIGTERM), -1, "pid 0 would be our own group");
    cr_assert_eq(tf_kill(-1, SIGTERM), -1, "pid -1 would be everyone");
}

Test(harness, kill_reaches_the_childs_own_children)
{
    /* sh starts a background sleep and waits: signalling the group ends both. */
    char dir[] = "/tmp/chorus-harness-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char pidfile[128], script[256];
    snprintf(pidfile, sizeof pidfile, "%s/pid", dir);
    snprintf(script, sizeof script, "sleep 600 & echo $! > %s; wait", pidfile);
    const char *argv[] = {"sh", "-c", script, NULL};
    pid_t pid = tf_spawn(argv, NULL, NULL);
    cr_assert_gt(pid, 0);
    cr_assert_eq(tf_wait_exit(pid, 200, NULL), -1);
    FILE *f = NULL;
    for (long long end = tf_now_ms() + 10000; !f && tf_now_ms() < end; tf_sleep_ms(10)) {
        f = fopen(pidfile, "r");
        if (f && fgetc(f) == EOF) {   /* opened before sh wrote it */
            fclose(f);
            f = NULL;
        } else if (f) {
            rewind(f);
        }
    }
    cr_assert_not_null(f, "sh never wrote %s", pidfile);
    int grandchild = 0;
    cr_assert_eq(fscanf(f, "%d", &grandchild), 1);
    fclose(f);
    cr_assert_eq(tf_kill(pid, SIGTERM), 0);
    cr_assert_eq(tf_wait_exit(pid, 10000, NULL), 0);
    pid_t g = grandchild;
    cr_assert(tf_wait_until(pid_gone, &g, 10000), "grandchild %d survived", grandchild);
    unlink(pidfile);
    rmdir(dir);
}

Test(harness, children_die_with_the_process_that_spawned_them)
{
    int pfd[2];
    cr_assert_eq(pipe(pfd), 0);
    pid_t test = fork();
    cr_assert_neq(test, -1);
    if (test == 0) {   /* plays a test process that crashes */
        close(pfd[0]);
        const char *argv[] = {"sleep", "600", NULL};
        pid_t child = tf_spawn(argv, NULL, NULL);
        ssize_t w = write(pfd[1], &child, sizeof child);
        (void)w;
        pause();
        _exit(0);
    }
    close(pfd[1]);
    pid_t child = -1;
    cr_assert_eq(read(pfd[0], &child, sizeof child), (ssize_t)sizeof child);
    close(pfd[0]);
    cr_assert_gt(child, 0);
    cr_assert_not(pid_gone(&child));
    cr_assert_eq(kill(test, SIGKILL), 0);
    cr_assert_eq(waitpid(test, NULL, 0), test);
    cr_assert(tf_wait_until(pid_gone, &child, 10000), "child %d outlived its parent", (int)child);
}

static bool counter_reaches_5(void *ud)
{
    return ++*(int *)ud >= 5;
}

static bool never(void *ud)
{
    (void)ud;
    return false;
}

Test(harness, wait_until_polls_until_true_or_deadline)
{
    int n = 0;
    cr_assert(tf_wait_until(counter_reaches_5, &n, 5000));
    cr_assert_eq(n, 5);
    long long t0 = tf_now_ms();
    cr_assert_not(tf_wait_until(never, NULL, 50));
    cr_assert_geq(tf_now_ms() - t0, 50);
}

Test(harness, free_port_is_bindable)
{
    int port = tf_free_port();
    cr_assert(port > 0 && port < 65536, "%d", port);
}
