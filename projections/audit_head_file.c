/* audit_head_file.c - the audit chain's head kept outside Redis
 * (AUDIT_HEAD_FILE): appended by the audit worker after each batch, read by
 * chorus-audit-verify.
 *
 * Why one line per batch is enough: a record's hash commits to every record
 * before it, so the line with the highest count vouches for the whole prefix
 * it covers. Someone who can write Redis but not this file cannot roll the
 * log and its head back (or rewrite them) without the verifier noticing. The
 * worker writes the line after Redis accepted the batch, so a crash between
 * the two leaves the file one batch behind, never ahead. */
#include "projections/audit.h"
#include "common/config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int pj_audit_head_file_open(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        snprintf(err, errlen, "AUDIT_HEAD_FILE %s: %s", path, strerror(errno));
    return fd;
}

int pj_audit_head_file_append(int fd, long long count, const char *hash, char *err, size_t errlen)
{
    char line[96];
    int n = snprintf(line, sizeof line, "%lld %s\n", count, hash);
    ssize_t w = write(fd, line, (size_t)n);   /* one write: O_APPEND keeps lines whole */
    if (w != n) {
        snprintf(err, errlen, "AUDIT_HEAD_FILE: %s", w < 0 ? strerror(errno) : "short write");
        return -1;
    }
    if (fsync(fd) != 0) {
        snprintf(err, errlen, "AUDIT_HEAD_FILE: fsync: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Parses "<count> <64 lowercase hex>" (no newline). 0 or -1. */
static int parse_line(const char *s, size_t n, long long *count, char hash[PJ_AUDIT_HEX])
{
    const char *sp = memchr(s, ' ', n);
    if (!sp || sp == s || (size_t)(s + n - (sp + 1)) != PJ_AUDIT_HEX - 1)
        return -1;
    char num[24];
    size_t nl = (size_t)(sp - s);
    if (nl >= sizeof num)
        return -1;
    memcpy(num, s, nl);
    num[nl] = '\0';
    int64_t v;
    if (cm_parse_int(num, 1, INT64_MAX, &v) != 0)
        return -1;
    for (const char *p = sp + 1; p < s + n; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return -1;
    *count = (long long)v;
    memcpy(hash, sp + 1, PJ_AUDIT_HEX - 1);
    hash[PJ_AUDIT_HEX - 1] = '\0';
    return 0;
}

int pj_audit_head_file_read(const char *path, pj_audit_anchor *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(err, errlen, "AUDIT_HEAD_FILE %s: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long long no = 0;
    int rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        no++;
        if (len == 0 || line[len - 1] != '\n')
            break;   /* torn last line: its batch is anchored by the next one */
        long long count;
        char hash[PJ_AUDIT_HEX];
        if (parse_line(line, (size_t)len - 1, &count, hash) != 0) {
            snprintf(err, errlen, "AUDIT_HEAD_FILE %s line %lld: expected \"<count> <64 hex digits>\"", path, no);
            rc = -1;
            break;
        }
        if (count == a->count && strcmp(hash, a->hash) != 0) {
            snprintf(err, errlen, "AUDIT_HEAD_FILE %s lines %lld and %lld disagree on the hash after %lld records",
                     path, a->line, no, count);
            rc = -1;
            break;
        }
        if (count > a->count) {
            a->count = count;
            memcpy(a->hash, hash, sizeof a->hash);
            a->line = no;
        }
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, errlen, "AUDIT_HEAD_FILE %s: read error", path);
        rc = -1;
    }
    free(line);
    fclose(f);
    return rc;
}
