/* test_audit.c - the audit worker's hash-chained log (workers/audit.c,
 * projections/audit_chain.c) with a real redis-server and real
 * `chorus-worker audit` processes.
 *
 * Guarantees shown: exactly one record per event even when every event is
 * delivered again (group rewound, redelivery stream, copies on the bus) and
 * two audit copies append concurrently, and the chain they build verifies;
 * an altered, removed, reordered or foreign-appended record is detected at
 * its position, by the library and by chorus-audit-verify.
 *
 * CHORUS_WORKER_BIN and CHORUS_AUDIT_VERIFY_BIN (meson env) name the binaries. */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/names.h"
#include "common/redis.h"
#include "projections/audit.h"
#include "tests/e2e/saga_env.h"
#include "tests/integration/saga_events.h"
#include "tests/support/proc.h"

#define BUS CM_BUS_STREAM_DEFAULT
#define GROUP "choreo-audit"
#define WAIT_MS 30000

static sg_env E;

static void setup(void)
{
    sg_setup(&E, NULL);
}

static void teardown(void)
{
    sg_teardown(&E);
}

TestSuite(audit, .init = setup, .fini = teardown, .timeout = 120);

/* Appends n sagas of every shape; returns the number of events. */
static long long append_sagas(int n)
{
    static const enum sx_shape shapes[] = {SX_SUCCESS, SX_NO_STOCK, SX_ORDER_LIMIT, SX_TIMEOUT};
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "co-%03d", i);
        sx_saga(E.s, shapes[i % 4], id, "c1", "p1", 1 + i % 3);
    }
    return sg_ll(&E, "XLEN %s", BUS);
}

static void wait_audited(long long count)
{
    bool ok = sx_wait_ll(E.c, PJ_AUDIT_HEAD_KEY, "count", count, WAIT_MS) &&
              sx_wait_group_idle(E.c, BUS, GROUP, WAIT_MS);
    if (!ok)
        sg_dump_logs(&E);
    cr_assert(ok, "the audit log did not reach %lld records", count);
}

/* Copies every entry of the bus to stream (new ids, same fields). */
static void copy_bus_to(const char *stream)
{
    redisReply *all = redisCommand(E.c, "XRANGE %s - +", BUS);
    cr_assert(all && all->type == REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < all->elements; i++) {
        const redisReply *f = all->element[i]->element[1];
        const char *argv[16] = {"XADD", stream, "*"};
        size_t argc = 3;
        for (size_t j = 0; j < f->elements && argc < 16; j++)
            argv[argc++] = f->element[j]->str;
        freeReplyObject(redisCommandArgv(E.c, (int)argc, argv, NULL));
    }
    freeReplyObject(all);
}

static pj_audit_report verify(void)
{
    pj_audit_report rep;
    char err[256];
    cr_assert_eq(pj_audit_verify(E.c, &rep, err, sizeof err), 0, "verify: %s", err);
    return rep;
}

/* Runs chorus-audit-verify; returns its exit code and its output in out. */
static int run_verify_cli(char *out, size_t outlen)
{
    const char *bin = getenv("CHORUS_AUDIT_VERIFY_BIN");
    cr_assert(bin && *bin, "CHORUS_AUDIT_VERIFY_BIN is not set (run through meson test)");
    char url[340], log[400];
    snprintf(url, sizeof url, "REDIS_URL=%s", E.r.url);
    snprintf(log, sizeof log, "%s/verify.log", E.r.dir);
    remove(log);
    const char *argv[] = {bin, NULL};
    const char *env[] = {url, "LOG_LEVEL=warn", NULL};
    pid_t pid = tf_spawn(argv, env, log);
    cr_assert_gt(pid, 0);
    int st = 0;
    cr_assert_eq(tf_wait_exit(pid, 30000, &st), 0);
    FILE *f = fopen(log, "r");
    cr_assert_not_null(f);
    size_t n = fread(out, 1, outlen - 1, f);
    out[n] = '\0';
    fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(audit, one_record_per_event_despite_redeliveries_and_two_copies)
{
    sg_spawn(&E, "audit", (const char *const[]){"BATCH_SIZE=5", NULL});
    sg_spawn(&E, "audit", (const char *const[]){"BATCH_SIZE=5", NULL});
    long long events = append_sagas(40);
    wait_audited(events);

    /* every event again, three ways */
    char retry[256];
    snprintf(retry, sizeof retry, "%s.retry.%s", BUS, GROUP);
    copy_bus_to(retry);
    copy_bus_to(BUS);
    sg_ll(&E, "XGROUP SETID %s %s 0", BUS, GROUP);
    cr_assert(sx_wait_group_idle(E.c, BUS, GROUP, WAIT_MS) && sx_wait_group_idle(E.c, retry, GROUP, WAIT_MS),
              "the redeliveries were not consumed");
    cr_assert_eq(sg_ll(&E, "HGET %s count", PJ_AUDIT_HEAD_KEY), events, "a redelivery added a record");
    cr_assert_eq(sg_ll(&E, "XLEN %s", PJ_AUDIT_LOG_KEY), events);

    /* each event id of the bus exactly once in the log */
    redisReply *log = redisCommand(E.c, "XRANGE %s - +", PJ_AUDIT_LOG_KEY);
    cr_assert(log && log->type == REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < log->elements; i++) {
        const redisReply *f = log->element[i]->element[1];
        cr_assert_str_eq(f->element[0]->str, "event_id");
        sg_ll(&E, "HINCRBY test:audit:ids %s 1", f->element[1]->str);
    }
    freeReplyObject(log);
    cr_assert_eq(sg_ll(&E, "HLEN test:audit:ids"), events, "some events have no record");

    pj_audit_report rep = verify();
    cr_assert(rep.intact, "chain broken at %lld: %s", rep.bad_pos, rep.problem);
    cr_assert_eq(rep.count, events);
    char out[1024];
    cr_assert_eq(run_verify_cli(out, sizeof out), 0, "chorus-audit-verify: %s", out);
    cr_assert(strstr(out, "\"intact\":true"), "%s", out);
}

/* Builds a log of the events of a few sagas with one audit worker, then
 * stops it. Returns the number of records. */
static long long build_log(void)
{
    sg_spawn(&E, "audit", NULL);
    long long events = append_sagas(6);
    wait_audited(events);
    sg_stop_workers(&E);
    pj_audit_report rep = verify();
    cr_assert(rep.intact, "fresh chain broken at %lld: %s", rep.bad_pos, rep.problem);
    return events;
}

/* Rewrites the log keeping its entry ids: entry i gets the fields of entry
 * from[i]; in entry alter, the value of field `field` becomes `value`. */
static void rewrite_log(const size_t *from, long long alter, const char *field, const char *value)
{
    redisReply *all = redisCommand(E.c, "XRANGE %s - +", PJ_AUDIT_LOG_KEY);
    cr_assert(all && all->type == REDIS_REPLY_ARRAY);
    sg_ll(&E, "DEL %s", PJ_AUDIT_LOG_KEY);
    for (size_t i = 0; i < all->elements; i++) {
        const redisReply *f = all->element[from ? from[i] : i]->element[1];
        const char *argv[24] = {"XADD", PJ_AUDIT_LOG_KEY, all->element[i]->element[0]->str};
        size_t argc = 3;
        for (size_t j = 0; j + 1 < f->elements && argc + 2 <= 24; j += 2) {
            argv[argc++] = f->element[j]->str;
            argv[argc++] = (long long)i == alter && !strcmp(f->element[j]->str, field) ? value : f->element[j + 1]->str;
        }
        redisReply *r = redisCommandArgv(E.c, (int)argc, argv, NULL);
        cr_assert(r && r->type == REDIS_REPLY_STRING, "XADD with the original id");
        freeReplyObject(r);
    }
    freeReplyObject(all);
}

static char *entry_id_at(long long pos)
{
    redisReply *r = redisCommand(E.c, "XRANGE %s - + COUNT %lld", PJ_AUDIT_LOG_KEY, pos + 1);
    cr_assert(r && r->type == REDIS_REPLY_ARRAY && (long long)r->elements == pos + 1);
    char *id = strdup(r->element[pos]->element[0]->str);
    freeReplyObject(r);
    return id;
}

Test(audit, altered_record_is_detected_at_its_position)
{
    long long n = build_log();
    long long k = n / 2;
    rewrite_log(NULL, -1, "", "");   /* rewriting alone changes nothing */
    cr_assert(verify().intact);

    rewrite_log(NULL, k, "type", "CheckoutSucceeded");
    pj_audit_report rep = verify();
    cr_assert_not(rep.intact);
    cr_assert_eq(rep.bad_pos, k);
    cr_assert(strstr(rep.problem, "altered"), "%s", rep.problem);
    char *id = entry_id_at(k);
    cr_assert_str_eq(rep.bad_id, id);
    free(id);

    char out[1024], want[64];
    cr_assert_eq(run_verify_cli(out, sizeof out), 1, "chorus-audit-verify must fail: %s", out);
    snprintf(want, sizeof want, "\"bad_position\":%lld", k);
    cr_assert(strstr(out, want), "%s", out);
}

Test(audit, altered_digest_of_the_first_record_is_detected)
{
    build_log();
    rewrite_log(NULL, 0, "digest", "0000000000000000000000000000000000000000000000000000000000000001");
    pj_audit_report rep = verify();
    cr_assert_not(rep.intact);
    cr_assert_eq(rep.bad_pos, 0);
}

Test(audit, removed_record_is_detected_at_its_position)
{
    long long n = build_log();
    long long k = n / 3;
    char *id = entry_id_at(k);
    sg_ll(&E, "XDEL %s %s", PJ_AUDIT_LOG_KEY, id);
    free(id);
    pj_audit_report rep = verify();
    cr_assert_not(rep.intact);
    cr_assert_eq(rep.bad_pos, k, "the record after the removed one no longer links");
    cr_assert(strstr(rep.problem, "removed"), "%s", rep.problem);
}

Test(audit, removed_last_record_is_detected_by_the_head)
{
    long long n = build_log();
    char *id = entry_id_at(n - 1);
    sg_ll(&E, "XDEL %s %s", PJ_AUDIT_LOG_KEY, id);
    free(id);
    pj_audit_report rep = verify();
    cr_assert_not(rep.intact);
    cr_assert_eq(rep.bad_pos, n - 1);
}

Test(audit, reordered_records_are_detected_at_the_first_moved)
{
    long long n = build_log();
    size_t *from = calloc((size_t)n, sizeof *from);
    for (long long i = 0; i < n; i++)
        from[i] = (size_t)i;
    long long k = n / 2;
    from[k] = (size_t)k + 1;
    from[k + 1] = (size_t)k;
    rewrite_log(from, -1, "", "");
    free(from);
    pj_audit_report rep = verify();
    cr_assert_not(rep.intact);
    cr_assert_eq(rep.bad_pos, k);
}

Test(audit, record_appended_outside_the_chain_is_detected)
{
    long long n = build_log();
    /* a modified copy of a record, appended at the end */
    redisReply *r = redisCommand(E.c, "XRANGE %s - + COUNT 1", PJ_AUDIT_LOG_KEY);
    cr_assert(r && r->elements == 1);
    const redisReply *f = r->element[0]->element[1];
    const char *argv[24] = {"XADD", PJ_AUDIT_LOG_KEY, "*"};
    size_t argc = 3;
    for (size_t j = 0; j + 1 < f->elements; j += 2) {
        argv[argc++] = f->element[j]->str;
        argv[argc++] = !strcmp(f->element[j]->str, "aggregate_id") ? "co-forged" : f->element[j + 1]->str;
    }
    freeReplyObject(redisCommandArgv(E.c, (int)argc, argv, NULL));
    freeReplyObject(r);
    pj_audit_report rep = verify();
    cr_assert_not(rep.intact);
    cr_assert_eq(rep.bad_pos, n);
}

Test(audit, audit_goes_on_after_a_restart_with_one_chain)
{
    long long n = build_log();
    sg_restart(&E, 0);
    sx_saga(E.s, SX_SUCCESS, "co-later", "c1", "p1", 1);
    wait_audited(n + 4);
    pj_audit_report rep = verify();
    cr_assert(rep.intact, "chain broken at %lld: %s", rep.bad_pos, rep.problem);
    cr_assert_eq(rep.count, n + 4);
}
