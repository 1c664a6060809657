/* test_redis_faults.c - the pure parts of issue 13's hardening in common/:
 * REDIS_URL credentials masked (cm_redis_url_mask) and ACL users parsed,
 * Redis failures classified in one place (cm_redis_fault_of: 503 vs 500),
 * and repeated log lines rate-limited with a count (cm_log_limited). */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/redis.h"
#include "tests/support/proc.h"

/* ---- masking ------------------------------------------------------------- */

Test(url_mask, the_password_is_replaced_and_the_rest_kept)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"redis://:s3cret@127.0.0.1:6399/0", "redis://:***@127.0.0.1:6399/0"},
        {"redis://app:s3cret@cache:6379", "redis://app:***@cache:6379"},
        {"redis://s3cret@cache", "redis://***@cache"},              /* the old password-only form */
        {"redis://app:p@ss:w/rd@cache/2", "redis://app:***@cache/2"}, /* '@' and '/' inside the password */
        {"redis-cluster://u:pw@h1:7000,h2:7001", "redis-cluster://u:***@h1:7000,h2:7001"},
        {"redis://cache:6379/1", "redis://cache:6379/1"},            /* nothing to hide */
        {"unix:/run/redis.sock?db=2", "unix:/run/redis.sock?db=2"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[256];
        cm_redis_url_mask(cases[i].in, out, sizeof out);
        cr_expect_str_eq(out, cases[i].want, "mask(%s)", cases[i].in);
    }
    char small[12];
    cm_redis_url_mask("redis://:s3cret@host", small, sizeof small);
    cr_assert_null(strstr(small, "s3c"), "truncation showed the password: %s", small);
    cm_redis_url_mask(NULL, small, sizeof small);
    cr_assert_str_empty(small);
}

Test(url_mask, parse_errors_name_the_url_masked)
{
    static const char *const bad[] = {
        "redis://:s3cret@host:99999/0", "redis://u:s3cret@host:6379/x", "redis://:s3cret@[::1",
        "redis://u:s3cret@:6379",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cm_redis_url u;
        char err[256] = "";
        cr_expect_eq(cm_redis_url_parse(bad[i], &u, err, sizeof err), -1, "accepted %s", bad[i]);
        cr_expect_null(strstr(err, "s3cret"), "the password is in: %s", err);
        cr_expect_not_null(strstr(err, "***"), "no masked URL in: %s", err);
    }
}

Test(url_mask, connect_errors_name_the_address_masked)
{
    char err[256] = "";
    /* port 1 on loopback: refused at once */
    redisContext *c = cm_redis_connect("redis://app:s3cret@127.0.0.1:1/0", 500, err, sizeof err);
    cr_assert_null(c);
    cr_assert_not_null(strstr(err, "redis://app:***@127.0.0.1:1/0"), "%s", err);
    cr_assert_null(strstr(err, "s3cret"), "%s", err);
}

Test(redis_url, an_acl_user_and_its_password_are_both_read)
{
    cm_redis_url u;
    char err[256] = "";
    cr_assert_eq(cm_redis_url_parse("redis://app:pw@cache:7000/1", &u, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(u.user, "app");
    cr_assert_str_eq(u.password, "pw");
    cr_assert_eq(cm_redis_url_parse("redis://:pw@cache", &u, err, sizeof err), 0, "%s", err);
    cr_assert_str_empty(u.user, "':pw@' names no user (AUTH pw)");
    cr_assert_str_eq(u.password, "pw");
    cr_assert_eq(cm_redis_url_parse("redis://cache", &u, err, sizeof err), 0, "%s", err);
    cr_assert_str_empty(u.user);
    cr_assert_str_empty(u.password);
}

/* ---- classification ------------------------------------------------------ */

static cm_redis_fault of_error(const char *text)
{
    redisReply r = {.type = REDIS_REPLY_ERROR, .str = (char *)text, .len = strlen(text)};
    return cm_redis_fault_of(NULL, &r);
}

Test(redis_fault, unavailable_redis_is_retryable_and_broken_data_is_permanent)
{
    cr_assert_eq(cm_redis_fault_of(NULL, NULL), CM_REDIS_UNREACHABLE, "no reply");
    cr_assert_eq(of_error("LOADING Redis is loading the dataset in memory"), CM_REDIS_UNREACHABLE);
    cr_assert_eq(of_error("BUSY Redis is busy running a script."), CM_REDIS_UNREACHABLE);
    cr_assert_eq(of_error("MASTERDOWN Link with MASTER is down"), CM_REDIS_UNREACHABLE);
    cr_assert_eq(of_error("CLUSTERDOWN The cluster is down"), CM_REDIS_TRANSIENT);
    cr_assert_eq(of_error("TRYAGAIN Multiple keys request during rehashing of slot"), CM_REDIS_TRANSIENT);
    cr_assert_eq(of_error("NOSCRIPT No matching script."), CM_REDIS_TRANSIENT);
    cr_assert_eq(of_error("OOM command not allowed when used memory > 'maxmemory'."), CM_REDIS_TRANSIENT);
    cr_assert_eq(of_error("WRONGTYPE Operation against a key holding the wrong kind of value script: 1f, on "
                          "@user_script:3."),
                 CM_REDIS_PERMANENT);
    cr_assert_eq(of_error("ERR user_script:12: attempt to perform arithmetic on a nil value script: 1f"),
                 CM_REDIS_PERMANENT);
    cr_assert_eq(of_error("ERR corrupt price_cents of product p1"), CM_REDIS_PERMANENT);
    cr_assert_eq(of_error("BUSYKEY Target key name already exists."), CM_REDIS_PERMANENT, "a prefix is not a word");
    /* the text form, as cm_reply_failed writes it */
    cr_assert_eq(cm_redis_fault_of_error("redis: LOADING x", 16), CM_REDIS_UNREACHABLE);
    cr_assert_eq(cm_redis_fault_of_error("redis: WRONGTYPE x", 18), CM_REDIS_PERMANENT);
    redisReply ok = {.type = REDIS_REPLY_STATUS, .str = "OK", .len = 2};
    cr_assert_eq(cm_redis_fault_of(NULL, &ok), CM_REDIS_OK);
}

/* ---- rate-limited log lines ---------------------------------------------- */

static char g_log[] = "/tmp/chorus-logrl-XXXXXX";

static void redirect(void)
{
    int fd = mkstemp(g_log);
    cr_assert_geq(fd, 0);
    cr_assert_geq(dup2(fd, STDERR_FILENO), 0);
    close(fd);
    cm_log_init("test");
    cm_log_set_level(CM_INFO);
}

static int count_lines(const char *needle)
{
    int n = tf_file_count(g_log, needle, NULL);
    cr_assert_geq(n, 0, "cannot read %s", g_log);
    return n;
}

Test(log_limited, a_repeated_line_is_written_once_a_second_with_its_count, .init = redirect)
{
    /* a flood of one key for ~1.3 s: one line at once, then one more saying
     * how many were dropped in between */
    int calls = 0;
    int64_t t0 = cm_mono_ms();
    while (cm_mono_ms() - t0 < 1300) {
        cm_log_limited(CM_WARN, "flood", "redis unavailable: %d", calls);
        calls++;
        if (calls % 100 == 0)
            cm_sleep_ms(1);
    }
    cm_log_limited(CM_WARN, "other", "another key is not held back");
    int flood = count_lines("redis unavailable");
    int counted = count_lines("(repeated ");
    int other = count_lines("another key");
    unlink(g_log);
    cr_assert_eq(other, 1, "a second key was held back by the first");
    cr_assert_gt(calls, 100, "only %d calls", calls);
    cr_assert_eq(flood, 2, "%d lines for %d calls over 1.3 s", flood, calls);
    cr_assert_eq(counted, 1, "the second line does not say how many were dropped");
}
