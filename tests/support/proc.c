/* proc.c - spawning, signalling and reaping test child processes.
 *
 * tf_spawn prepares everything that allocates (the program path, the
 * environment, the file descriptors) before fork, so the child only makes
 * async-signal-safe calls between fork and exec: a test process may have
 * threads (libmicrohttpd, criterion's own), and malloc after fork in a
 * threaded process can deadlock. A close-on-exec pipe reports a failed exec
 * back to the parent, so a missing binary is an error of tf_spawn, not a
 * child that silently exits 127. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* pipe2, nftw: also set by the build, this keeps the file standalone */
#endif
#include "tests/support/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

long long tf_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tf_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Finds prog in PATH (or takes it as is when it contains a '/') and writes
 * an executable path to out. Returns 0, or -1 with errno ENOENT. */
static int resolve_program(const char *prog, char *out, size_t outlen)
{
    if (strchr(prog, '/')) {
        if (snprintf(out, outlen, "%s", prog) >= (int)outlen) {
            errno = ENAMETOOLONG;
            return -1;
        }
        return access(out, X_OK);
    }
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *colon = strchr(path, ':');
        size_t n = colon ? (size_t)(colon - path) : strlen(path);
        if (n > 0 && snprintf(out, outlen, "%.*s/%s", (int)n, path, prog) < (int)outlen) {
            struct stat st;
            if (stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
                return 0;
        }
        path += n;
        if (*path == ':')
            path++;
    }
    errno = ENOENT;
    return -1;
}

/* Returns a NULL-terminated copy of environ (the pointer array only; the
 * strings are borrowed) with every "K=V" of extra set, replacing an existing
 * K. The caller frees the array with free(). NULL on out-of-memory. */
static char **build_env(const char *const extra[])
{
    size_t n = 0, m = 0;
    while (environ && environ[n])
        n++;
    while (extra && extra[m])
        m++;
    char **envp = calloc(n + m + 1, sizeof *envp);
    if (!envp)
        return NULL;
    for (size_t i = 0; i < n; i++)
        envp[i] = environ[i];
    for (size_t j = 0; j < m; j++) {
        const char *eq = strchr(extra[j], '=');
        size_t klen = eq ? (size_t)(eq - extra[j]) + 1 : strlen(extra[j]);
        size_t i = 0;
        while (i < n && strncmp(envp[i], extra[j], klen) != 0)
            i++;
        envp[i] = (char *)extra[j];
        if (i == n)
            n++;
    }
    envp[n] = NULL;
    return envp;
}

/* In the child: makes fd available as target, clearing close-on-exec. */
static int move_fd(int fd, int target)
{
    if (fd == target)
        return fcntl(fd, F_SETFD, 0);
    return dup2(fd, target) < 0 ? -1 : 0;
}

/* The child between fork and exec: async-signal-safe calls only. */
static void child_exec(const char *path, const char *const argv[], char **envp, int nullfd, int logfd,
                       int errfd, int deathsig, pid_t parent)
{
    if (prctl(PR_SET_PDEATHSIG, deathsig) != 0)
        goto fail;
    if (getppid() != parent) {   /* the parent died before prctl took effect */
        errno = ESRCH;
        goto fail;
    }
    if (setpgid(0, 0) != 0)
        goto fail;
    /* Start from a clean signal state: the test may block or ignore some. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    static const int reset[] = {SIGINT, SIGTERM, SIGPIPE, SIGCHLD, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof reset / sizeof reset[0]; i++)
        signal(reset[i], SIG_DFL);
    if (move_fd(nullfd, STDIN_FILENO) != 0)
        goto fail;
    if (logfd >= 0 && (move_fd(logfd, STDOUT_FILENO) != 0 || move_fd(logfd, STDERR_FILENO) != 0))
        goto fail;
    execve(path, (char *const *)argv, envp);
fail:;
    int e = errno;
    ssize_t w = write(errfd, &e, sizeof e);
    (void)w;
    _exit(127);
}

pid_t tf_spawn_sig(const char *const argv[], const char *const env[], const char *logpath, int deathsig)
{
    if (!argv || !argv[0]) {
        errno = EINVAL;
        return -1;
    }
    char path[PATH_MAX];
    if (resolve_program(argv[0], path, sizeof path) != 0)
        return -1;

    pid_t pid = -1;
    int nullfd = -1, logfd = -1, pfd[2] = {-1, -1}, saved = 0;
    char **envp = build_env(env);
    if (!envp) {
        saved = ENOMEM;
        goto out;
    }
    nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (nullfd < 0) {
        saved = errno;
        goto out;
    }
    if (logpath) {
        logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (logfd < 0) {
            saved = errno;
            goto out;
        }
    }
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        saved = errno;
        goto out;
    }

    pid_t parent = getpid();
    pid = fork();
    if (pid < 0) {
        saved = errno;
        goto out;
    }
    if (pid == 0)
        child_exec(path, argv, envp, nullfd, logfd, pfd[1], deathsig, parent);

    /* EOF on the pipe means exec succeeded (the write end closed on exec). */
    close(pfd[1]);
    pfd[1] = -1;
    int child_errno = 0;
    ssize_t n;
    do
        n = read(pfd[0], &child_errno, sizeof child_errno);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        pid = -1;
        saved = child_errno ? child_errno : ECHILD;
    }
out:
    if (pfd[0] >= 0)
        close(pfd[0]);
    if (pfd[1] >= 0)
        close(pfd[1]);
    if (logfd >= 0)
        close(logfd);
    if (nullfd >= 0)
        close(nullfd);
    free(envp);
    if (saved) {
        errno = saved;
        return -1;
    }
    return pid;
}

pid_t tf_spawn(const char *const argv[], const char *const env[], const char *logpath)
{
    return tf_spawn_sig(argv, env, logpath, SIGKILL);
}

int tf_kill(pid_t pid, int sig)
{
    if (pid <= 1) {   /* never 0 or -1: those would signal our own group or everyone */
        errno = EINVAL;
        return -1;
    }
    if (kill(-pid, sig) == 0)
        return 0;
    return kill(pid, sig);
}

int tf_wait_exit(pid_t pid, int timeout_ms, int *status)
{
    if (pid <= 0) {
        errno = EINVAL;
        return -1;
    }
    long long deadline = tf_now_ms() + timeout_ms;
    int nap = 1;
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (status)
                *status = st;
            return 0;
        }
        if (r < 0 && errno != EINTR)
            return -1;
        long long left = deadline - tf_now_ms();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        tf_sleep_ms(nap < left ? nap : (int)left);
        if (nap < 10)
            nap *= 2;
    }
}

int tf_file_count(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, a) && (!b || strstr(line, b));
    fclose(f);
    return n;
}

bool tf_wait_until(bool (*cond)(void *ud), void *ud, int timeout_ms)
{
    long long deadline = tf_now_ms() + timeout_ms;
    for (;;) {
        if (cond(ud))
            return true;
        long long left = deadline - tf_now_ms();
        if (left <= 0)
            return cond(ud);
        tf_sleep_ms(left < 10 ? (int)left : 10);
    }
}

int tf_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    int e = errno;
    close(fd);
    errno = e;
    return port;
}

void tf_dump_file(const char *path, const char *title)
{
    enum { TAIL = 64 * 1024 };   /* enough for a log; a runaway one is cut */
    fprintf(stderr, "----- %s (%s) -----\n", title ? title : "file", path);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "(cannot open: %s)\n", strerror(errno));
    } else {
        if (fseek(f, 0, SEEK_END) == 0 && ftell(f) > TAIL) {
            fseek(f, -TAIL, SEEK_END);
            fprintf(stderr, "(... only the last %d bytes ...)\n", TAIL);
        } else {
            rewind(f);
        }
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            fwrite(buf, 1, n, stderr);
        fclose(f);
    }
    fprintf(stderr, "----- end of %s -----\n", title ? title : "file");
}
