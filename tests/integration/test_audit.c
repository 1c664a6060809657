/* test_audit.c - the audit worker's hash-chained log (workers/audit.c,
 * projections/audit_chain.c) with a real redis-server and real
 * `chorus-worker audit` processes.
 *
 * Guarantees shown: exactly one record per event even when every event is
 * delivered again (group rewound, redelivery stream, copies on the bus) and
 * two audit copies append concurrently, and the chain they build verifies;
 * an altered, removed, reordered or foreign-appended record is detected at
 * its position, by the library and by chorus-audit-verify. With AUDIT_KEY a
 * chain recomputed without the key fails, and an unkeyed chain may become
 * keyed but not back; with AUDIT_HEAD_FILE a Redis rolled back is caught;
 * --deep finds an event edited in its history; the dedupe marks expire after
 * AUDIT_SEEN_TTL_S (an event delivered after that is audited again, and the
 * chain still verifies); the script module (workers/lua/audit_append.h) answers
 * moved / ok / wrong_key as named, writes each record's prev itself and
 * refuses records not linked in order; a chain and seen marks left by the
 * previous script (prev sent, a SETRANGE per record) are continued by the
 * worker with one record per event, and verify, --deep included; a lone
 * worker reads the seen marks once, then sends each batch in one call.
 *
 * CHORUS_WORKER_BIN and CHORUS_AUDIT_VERIFY_BIN (meson env) name the binaries. */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common/names.h"
#include "common/redis.h"
#include "projections/audit.h"
#include "tests/e2e/saga_env.h"
#include "tests/integration/saga_events.h"
#include "tests/support/proc.h"
#include "workers/lua/audit_append.h"

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

static pj_audit_report verify_with(const pj_audit_opts *o)
{
    pj_audit_report rep;
    char err[256];
    cr_assert_eq(pj_audit_verify(E.c, o, &rep, err, sizeof err), 0, "verify: %s", err);
    return rep;
}

static pj_audit_report verify(void)
{
    return verify_with(NULL);
}

/* Runs chorus-audit-verify with extra flags and env (NULL-terminated lists,
 * may be NULL); returns its exit code and its output in out. */
static int run_verify_cli_with(const char *const *flags, const char *const *extra_env, char *out, size_t outlen)
{
    const char *bin = getenv("CHORUS_AUDIT_VERIFY_BIN");
    cr_assert(bin && *bin, "CHORUS_AUDIT_VERIFY_BIN is not set (run through meson test)");
    char url[340], log[400];
    snprintf(url, sizeof url, "REDIS_URL=%s", E.r.url);
    snprintf(log, sizeof log, "%s/verify.log", E.r.dir);
    remove(log);
    const char *argv[8] = {bin};
    for (int i = 0; flags && flags[i] && i < 6; i++)
        argv[i + 1] = flags[i];
    const char *env[8] = {url, "LOG_LEVEL=warn"};
    for (int i = 0; extra_env && extra_env[i] && i < 5; i++)
        env[i + 2] = extra_env[i];
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

static int run_verify_cli(char *out, size_t outlen)
{
    return run_verify_cli_with(NULL, NULL, out, outlen);
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

/* ---- keyed chain, head file, --deep, lifetimes, the script module -------- */

/* 32 bytes 00 01 .. 1f, as hex. */
#define KEY_HEX "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define OTHER_KEY_HEX "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

static pj_audit_key parse_key(const char *hex)
{
    pj_audit_key k;
    char err[256];
    cr_assert_eq(pj_audit_key_parse(hex, strlen(hex), "AUDIT_KEY", &k, err, sizeof err), 0, "%s", err);
    return k;
}

/* build_log with extra worker env, verified with opts. */
static long long build_log_with(const char *const *env, const pj_audit_opts *o)
{
    sg_spawn(&E, "audit", env);
    long long events = append_sagas(6);
    wait_audited(events);
    sg_stop_workers(&E);
    pj_audit_report rep = verify_with(o);
    cr_assert(rep.intact, "fresh chain broken at %lld: %s", rep.bad_pos, rep.problem);
    return events;
}

/* The value of field in an XRANGE entry's field list (NULL when absent). */
static const char *field_of(const redisReply *entry, const char *field)
{
    const redisReply *f = entry->element[1];
    for (size_t j = 0; j + 1 < f->elements; j += 2)
        if (!strcmp(f->element[j]->str, field))
            return f->element[j + 1]->str;
    return NULL;
}

/* What someone with Redis access but not the key can do: rewrites records
 * from position k on (record k's type changed to forged_type when not NULL)
 * and rehashes them, and the head, with key (NULL: unkeyed). */
static void recompute_from(long long k, const char *forged_type, const pj_audit_key *key)
{
    redisReply *all = redisCommand(E.c, "XRANGE %s - +", PJ_AUDIT_LOG_KEY);
    cr_assert(all && all->type == REDIS_REPLY_ARRAY);
    sg_ll(&E, "DEL %s", PJ_AUDIT_LOG_KEY);   /* an XADD with an old id needs an empty stream */
    char prev[PJ_AUDIT_HEX], hash[PJ_AUDIT_HEX];
    snprintf(prev, sizeof prev, "%s", pj_audit_genesis);
    for (size_t i = 0; i < all->elements; i++) {
        const redisReply *e = all->element[i];
        pj_audit_rec rec = {field_of(e, "event_id"), field_of(e, "entry_id"),
                            (long long)i == k && forged_type ? forged_type : field_of(e, "type"),
                            field_of(e, "aggregate_id"), field_of(e, "digest")};
        if ((long long)i < k)
            snprintf(hash, sizeof hash, "%s", field_of(e, "hash"));
        else
            pj_audit_hash(key, prev, &rec, hash);
        const char *argv[] = {"XADD",         PJ_AUDIT_LOG_KEY, e->element[0]->str, "event_id", rec.event_id,
                              "entry_id",     rec.entry_id,     "type",             rec.type,   "aggregate_id",
                              rec.aggregate_id, "digest",       rec.digest,         "prev",     prev,
                              "hash",         hash};
        redisReply *r = redisCommandArgv(E.c, 17, argv, NULL);
        cr_assert(r && r->type == REDIS_REPLY_STRING, "XADD with the original id");
        freeReplyObject(r);
        snprintf(prev, sizeof prev, "%s", hash);
    }
    freeReplyObject(all);
    freeReplyObject(redisCommand(E.c, "HSET %s hash %s key_id %s", PJ_AUDIT_HEAD_KEY, prev,
                                 key ? key->id : PJ_AUDIT_UNKEYED));
}

Test(audit, chain_recomputed_without_the_key_fails_verification)
{
    pj_audit_key key = parse_key(KEY_HEX), other = parse_key(OTHER_KEY_HEX);
    pj_audit_opts keyed = {.key = &key};
    long long n = build_log_with((const char *const[]){"AUDIT_KEY=" KEY_HEX, NULL}, &keyed);
    char *kid = sg_str(&E, "HGET %s key_id", PJ_AUDIT_HEAD_KEY);
    cr_assert_str_eq(kid, key.id, "the head names the chain's key");
    free(kid);
    pj_audit_report rep = verify_with(&keyed);
    cr_assert_eq(rep.count, n);
    cr_assert_eq(rep.unkeyed, 0);

    /* without the key, or with another, the chain cannot be verified (exit 2) */
    char err[256];
    cr_assert_eq(pj_audit_verify(E.c, NULL, &rep, err, sizeof err), -1);
    cr_assert(strstr(err, "AUDIT_KEY"), "%s", err);
    cr_assert_eq(pj_audit_verify(E.c, &(pj_audit_opts){.key = &other}, &rep, err, sizeof err), -1);
    cr_assert(strstr(err, "not the audit chain's key"), "%s", err);
    char out[1024];
    cr_assert_eq(run_verify_cli(out, sizeof out), 2, "%s", out);
    cr_assert_eq(run_verify_cli_with(NULL, (const char *const[]){"AUDIT_KEY=" KEY_HEX, NULL}, out, sizeof out), 0,
                 "%s", out);

    /* a record altered and the rest of the chain rehashed without the key */
    long long k = n / 2;
    recompute_from(k, "CheckoutSucceeded", NULL);
    freeReplyObject(redisCommand(E.c, "HSET %s key_id %s", PJ_AUDIT_HEAD_KEY, key.id));
    rep = verify_with(&keyed);
    cr_assert_not(rep.intact);
    cr_assert_eq(rep.bad_pos, k);
    cr_assert(strstr(rep.problem, "AUDIT_KEY"), "%s", rep.problem);

    /* the whole chain rehashed without the key: consistent for anyone without
     * it, refused by whoever holds it */
    recompute_from(0, NULL, NULL);
    cr_assert(verify().intact, "an unkeyed verifier cannot tell");
    rep = verify_with(&keyed);
    cr_assert_not(rep.intact);
    cr_assert(strstr(rep.problem, "no record is hashed with AUDIT_KEY"), "%s", rep.problem);
    cr_assert_eq(run_verify_cli_with(NULL, (const char *const[]){"AUDIT_KEY=" KEY_HEX, NULL}, out, sizeof out), 1,
                 "%s", out);
    cr_assert(strstr(out, "no record is hashed with AUDIT_KEY"), "%s", out);

    /* rehashed with another key: no better */
    recompute_from(0, NULL, &other);
    freeReplyObject(redisCommand(E.c, "HSET %s key_id %s", PJ_AUDIT_HEAD_KEY, key.id));
    rep = verify_with(&keyed);
    cr_assert_not(rep.intact);
    cr_assert_eq(rep.bad_pos, 0);
}

/* Polls until the worker at index i exits; returns its exit code. */
static int wait_worker_exit(int i)
{
    int st = 0;
    cr_assert_eq(tf_wait_exit(E.p[i].pid, 20000, &st), 0, "the worker kept running");
    E.p[i].pid = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool log_contains(int i, const char *needle)
{
    FILE *f = fopen(E.p[i].log, "r");
    if (!f)
        return false;
    char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return strstr(buf, needle) != NULL;
}

Test(audit, unkeyed_chain_becomes_keyed_and_never_back)
{
    long long n = build_log();
    pj_audit_key key = parse_key(KEY_HEX);
    sg_spawn(&E, "audit", (const char *const[]){"AUDIT_KEY=" KEY_HEX, NULL});
    sx_saga(E.s, SX_SUCCESS, "co-keyed", "c1", "p1", 1);
    wait_audited(n + 4);
    pj_audit_report rep = verify_with(&(pj_audit_opts){.key = &key});
    cr_assert(rep.intact, "chain broken at %lld: %s", rep.bad_pos, rep.problem);
    cr_assert_eq(rep.count, n + 4);
    cr_assert_eq(rep.unkeyed, n, "the records before the key are its unkeyed prefix");
    /* the default lifetime of the dedupe marks: 7 days from the last event */
    long long ttl = sg_ll(&E, "TTL %scheckout:co-keyed", PJ_AUDIT_SEEN_PREFIX);
    cr_assert(ttl > 600000 && ttl <= 604800, "seen marks TTL %lld", ttl);
    sg_stop_workers(&E);

    /* a worker without the key (or with another) refuses to extend it */
    int u = sg_spawn(&E, "audit", NULL);
    cr_assert_neq(wait_worker_exit(u), 0, "an unkeyed worker started on a keyed chain");
    cr_assert(log_contains(u, "keyed with key id"), "the worker's log says why");
    int o = sg_spawn(&E, "audit", (const char *const[]){"AUDIT_KEY=" OTHER_KEY_HEX, NULL});
    cr_assert_neq(wait_worker_exit(o), 0, "a worker with another key started");
    cr_assert(verify_with(&(pj_audit_opts){.key = &key}).intact);
}

Test(audit, audit_key_is_validated_with_a_clear_error)
{
    pj_audit_key a, b;
    char err[256];
    unsigned char raw[32];
    for (int i = 0; i < 32; i++)
        raw[i] = (unsigned char)i;
    char b64[64];
    sodium_bin2base64(b64, sizeof b64, raw, sizeof raw, sodium_base64_VARIANT_ORIGINAL);
    cr_assert_eq(pj_audit_key_parse(KEY_HEX "\n", strlen(KEY_HEX) + 1, "AUDIT_KEY", &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(pj_audit_key_parse(b64, strlen(b64), "AUDIT_KEY", &b, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a.len, 32);
    cr_assert_str_eq(a.id, b.id, "hex and base64 of one key are one key");
    cr_assert_eq(memcmp(a.bytes, raw, 32), 0);
    cr_assert_eq(pj_audit_key_parse("abcd", 4, "AUDIT_KEY", &a, err, sizeof err), -1);
    cr_assert(strstr(err, "AUDIT_KEY is 2 bytes") && strstr(err, "32"), "%s", err);
    cr_assert_eq(a.len, 0);
    const char *junk = "this is not a key, it has spaces and is long enough!!";
    cr_assert_eq(pj_audit_key_parse(junk, strlen(junk), "AUDIT_KEY", &a, err, sizeof err), -1);
    cr_assert(strstr(err, "AUDIT_KEY"), "%s", err);
    cr_assert_eq(pj_audit_key_load(KEY_HEX, "/nonexistent", &a, err, sizeof err), -1);
    cr_assert(strstr(err, "both"), "%s", err);
    cr_assert_eq(pj_audit_key_load(NULL, "/nonexistent/key", &a, err, sizeof err), -1);
    cr_assert(strstr(err, "AUDIT_KEY_FILE /nonexistent/key"), "%s", err);
    cr_assert_eq(pj_audit_key_load(NULL, NULL, &a, err, sizeof err), 0);
    cr_assert_str_eq(a.id, PJ_AUDIT_UNKEYED);

    /* a key file works for the worker and the verifier; a bad key stops the worker */
    char path[400], env[420];
    snprintf(path, sizeof path, "%s/audit-key", E.r.dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "%s\n", b64);
    fclose(f);
    chmod(path, 0600);
    snprintf(env, sizeof env, "AUDIT_KEY_FILE=%s", path);
    build_log_with((const char *const[]){env, NULL}, &(pj_audit_opts){.key = &b});
    char out[1024];
    cr_assert_eq(run_verify_cli_with(NULL, (const char *const[]){env, NULL}, out, sizeof out), 0, "%s", out);
    int w = sg_spawn(&E, "audit", (const char *const[]){"AUDIT_KEY=abcd", NULL});
    cr_assert_neq(wait_worker_exit(w), 0);
    cr_assert(log_contains(w, "AUDIT_KEY is 2 bytes"), "the worker's log names the problem");
}

static bool worker0_saw_rollback(void *ud)
{
    (void)ud;
    return log_contains(0, "rolled back or restored");
}

Test(audit, rolled_back_head_is_reported_against_the_head_file)
{
    char path[400], env[420], err[256];
    snprintf(path, sizeof path, "%s/audit-head", E.r.dir);
    snprintf(env, sizeof env, "AUDIT_HEAD_FILE=%s", path);
    long long n = build_log_with((const char *const[]){env, "BATCH_SIZE=4", NULL}, NULL);
    pj_audit_anchor a;
    cr_assert_eq(pj_audit_head_file_read(path, &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a.count, n, "the file's last line vouches for every record");
    char *head = sg_str(&E, "HGET %s hash", PJ_AUDIT_HEAD_KEY);
    cr_assert_str_eq(a.hash, head);
    free(head);
    cr_assert_gt(a.line, 1, "one line per batch");
    pj_audit_report rep = verify_with(&(pj_audit_opts){.anchor = &a});
    cr_assert(rep.intact, "%s", rep.problem);
    cr_assert_eq(rep.anchored, n);

    /* roll Redis back to the state after k records */
    long long k = n / 2;
    redisReply *all = redisCommand(E.c, "XRANGE %s - +", PJ_AUDIT_LOG_KEY);
    cr_assert(all && (long long)all->elements == n);
    char hash_k[PJ_AUDIT_HEX];
    snprintf(hash_k, sizeof hash_k, "%s", field_of(all->element[k - 1], "hash"));
    for (long long i = k; i < n; i++)
        sg_ll(&E, "XDEL %s %s", PJ_AUDIT_LOG_KEY, all->element[i]->element[0]->str);
    freeReplyObject(all);
    freeReplyObject(redisCommand(E.c, "HSET %s hash %s count %lld", PJ_AUDIT_HEAD_KEY, hash_k, k));

    cr_assert(verify().intact, "Redis alone is consistent after a rollback");
    rep = verify_with(&(pj_audit_opts){.anchor = &a});
    cr_assert_not(rep.intact);
    cr_assert_eq(rep.bad_pos, k);
    cr_assert(strstr(rep.problem, "rolled back"), "%s", rep.problem);
    char out[1024];
    cr_assert_eq(run_verify_cli_with(NULL, (const char *const[]){env, NULL}, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "rolled back"), "%s", out);

    /* the worker says so when it starts on the rolled-back Redis */
    sg_restart(&E, 0);
    cr_assert(tf_wait_until(worker0_saw_rollback, NULL, 10000), "no rollback error in the worker's log");
}

Test(audit, event_edited_in_its_history_is_found_by_deep)
{
    build_log();
    pj_audit_report rep = verify_with(&(pj_audit_opts){.deep = true});
    cr_assert(rep.intact, "%s", rep.problem);
    cr_assert(rep.deep);
    char out[1024];
    cr_assert_eq(run_verify_cli_with((const char *const[]){"--deep", NULL}, NULL, out, sizeof out), 0, "%s", out);

    /* what redis-cli can do: LSET the first event of co-002 with another client */
    char hkey[128];
    es_history_key(PJ_AUDIT_AGGREGATE, "co-002", hkey, sizeof hkey);
    char *el = sg_str(&E, "LINDEX %s 0", hkey);
    cr_assert_not_null(el);
    char *orig = strdup(el);
    char *c1 = strstr(el, "\"c1\"");
    cr_assert_not_null(c1, "%s", el);
    c1[2] = '9';
    char event_id[64];
    snprintf(event_id, sizeof event_id, "%.*s", (int)strcspn(el, "\n"), el);
    redisReply *r = redisCommand(E.c, "LSET %s 0 %s", hkey, el);
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    free(el);

    cr_assert(verify().intact, "the chain itself is untouched");
    rep = verify_with(&(pj_audit_opts){.deep = true});
    cr_assert_not(rep.intact);
    cr_assert_str_eq(rep.bad_event_id, event_id);
    cr_assert(strstr(rep.problem, event_id) && strstr(rep.problem, "altered"), "%s", rep.problem);
    cr_assert_eq(run_verify_cli_with((const char *const[]){"--deep", NULL}, NULL, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, event_id), "%s", out);
    cr_assert_eq(run_verify_cli(out, sizeof out), 0, "without --deep only the chain is checked: %s", out);

    /* put it back; then remove the last event of another history */
    freeReplyObject(redisCommand(E.c, "LSET %s 0 %s", hkey, orig));
    free(orig);
    cr_assert(verify_with(&(pj_audit_opts){.deep = true}).intact);
    es_history_key(PJ_AUDIT_AGGREGATE, "co-004", hkey, sizeof hkey);
    el = sg_str(&E, "RPOP %s", hkey);
    cr_assert_not_null(el);
    snprintf(event_id, sizeof event_id, "%.*s", (int)strcspn(el, "\n"), el);
    free(el);
    rep = verify_with(&(pj_audit_opts){.deep = true});
    cr_assert_not(rep.intact);
    cr_assert_str_eq(rep.bad_event_id, event_id);
    cr_assert(strstr(rep.problem, "missing"), "%s", rep.problem);
}

static bool no_seen_marks(void *ud)
{
    (void)ud;
    return sg_count_keys(&E, PJ_AUDIT_SEEN_PREFIX "*") == 0;
}

Test(audit, seen_marks_expire_and_a_later_redelivery_is_audited_again)
{
    sg_spawn(&E, "audit", (const char *const[]){"AUDIT_SEEN_TTL_S=1", NULL});
    long long events = append_sagas(8);
    wait_audited(events);
    cr_assert(tf_wait_until(no_seen_marks, NULL, 15000), "the seen marks did not expire");
    cr_assert_eq(sg_count_keys(&E, CM_KEY_PREFIX "audit:seen*"), 0, "no dedupe hash of the old layout either");

    /* the decided behaviour: an event delivered after its marks expired gets
     * a second record, and the chain stays one verifiable chain */
    sg_ll(&E, "XGROUP SETID %s %s 0", BUS, GROUP);
    wait_audited(2 * events);
    pj_audit_report rep = verify_with(&(pj_audit_opts){.deep = true});
    cr_assert(rep.intact, "chain broken at %lld: %s", rep.bad_pos, rep.problem);
    cr_assert_eq(rep.count, 2 * events);
    redisReply *log = redisCommand(E.c, "XRANGE %s - +", PJ_AUDIT_LOG_KEY);
    cr_assert(log && log->type == REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < log->elements; i++)
        sg_ll(&E, "HINCRBY test:audit:ids %s 1", field_of(log->element[i], "event_id"));
    freeReplyObject(log);
    cr_assert_eq(sg_ll(&E, "HLEN test:audit:ids"), events);
    redisReply *counts = redisCommand(E.c, "HVALS test:audit:ids");
    for (size_t i = 0; i < counts->elements; i++)
        cr_assert_str_eq(counts->element[i]->str, "2", "each event audited once per delivery window");
    freeReplyObject(counts);
}

/* A record for the script test; strings live in rec_buf. */
typedef struct rec_buf {
    char event_id[16], entry_id[16], aggregate_id[16], digest[PJ_AUDIT_HEX], hash[PJ_AUDIT_HEX],
        seen_key[96];
    wk_aa_record r;
} rec_buf;

static void make_rec(rec_buf *b, const pj_audit_key *key, const char *prev, const char *checkout, int64_t seq)
{
    snprintf(b->event_id, sizeof b->event_id, "ev-%s-%lld", checkout + 3, (long long)seq);
    snprintf(b->entry_id, sizeof b->entry_id, "%lld-0", 1000 + (long long)seq);
    snprintf(b->aggregate_id, sizeof b->aggregate_id, "%s", checkout);
    snprintf(b->seen_key, sizeof b->seen_key, "%scheckout:%s", PJ_AUDIT_SEEN_PREFIX, checkout);
    pj_audit_digest(b->event_id, strlen(b->event_id), b->digest);
    b->r.rec = (pj_audit_rec){b->event_id, b->entry_id, "CheckoutInitiated", b->aggregate_id, b->digest};
    pj_audit_hash(key, prev, &b->r.rec, b->hash);
    b->r.prev = prev;
    b->r.hash = b->hash;
    b->r.seen_key = b->seen_key;
    b->r.seq = seq;
}

static wk_aa_verdict call_script(const char *head, const char *key_id, rec_buf *recs, size_t n)
{
    wk_aa_record r[4];
    for (size_t i = 0; i < n; i++)
        r[i] = recs[i].r;
    wk_aa_call call = {.head = head, .key_id = key_id, .seen_ttl_s = 1000, .recs = r, .n = n};
    wk_aa_verdict v;
    char err[256];
    cr_assert_eq(wk_audit_append(E.c, &call, &v, err, sizeof err), 0, "%s", err);
    return v;
}

Test(audit, append_script_answers_moved_ok_or_wrong_key_and_writes_marks)
{
    pj_audit_key key = parse_key(KEY_HEX);
    rec_buf b[3];
    make_rec(&b[0], &key, pj_audit_genesis, "co-1", 1);
    wk_aa_verdict v = call_script("", key.id, b, 1);
    cr_assert_eq(v.status, WK_AA_OK);
    cr_assert_eq(v.count, 1);

    /* every named argument lands in its field */
    redisReply *log = redisCommand(E.c, "XRANGE %s - +", PJ_AUDIT_LOG_KEY);
    cr_assert(log && log->elements == 1);
    const char *const want[][2] = {{"event_id", b[0].event_id}, {"entry_id", b[0].entry_id},
                                   {"type", "CheckoutInitiated"}, {"aggregate_id", "co-1"},
                                   {"digest", b[0].digest},      {"prev", pj_audit_genesis},
                                   {"hash", b[0].hash}};
    const redisReply *f = log->element[0]->element[1];
    cr_assert_eq(f->elements, 14);
    for (size_t i = 0; i < 7; i++) {
        cr_assert_str_eq(f->element[2 * i]->str, want[i][0]);
        cr_assert_str_eq(f->element[2 * i + 1]->str, want[i][1], "field %s", want[i][0]);
    }
    freeReplyObject(log);
    const char *const head1[] = {"hash", b[0].hash, "count", "1", "key_id", key.id, NULL};
    sx_assert_hash(E.c, PJ_AUDIT_HEAD_KEY, head1);
    char *mark = sg_str(&E, "GET %s", b[0].seen_key);
    cr_assert_str_eq(mark, "1");
    free(mark);
    long long ttl = sg_ll(&E, "TTL %s", b[0].seen_key);
    cr_assert(ttl > 0 && ttl <= 1000, "TTL %lld", ttl);

    /* a stale head: moved, with the current one, nothing written */
    make_rec(&b[1], &key, pj_audit_genesis, "co-1", 2);
    v = call_script("", key.id, &b[1], 1);
    cr_assert_eq(v.status, WK_AA_MOVED);
    cr_assert_str_eq(v.head, b[0].hash);
    /* the right head but an event already marked: moved too */
    make_rec(&b[1], &key, b[0].hash, "co-1", 1);
    v = call_script(b[0].hash, key.id, &b[1], 1);
    cr_assert_eq(v.status, WK_AA_MOVED);
    cr_assert_eq(sg_ll(&E, "XLEN %s", PJ_AUDIT_LOG_KEY), 1, "a refused call writes nothing");

    /* the right head: two aggregates in one call */
    make_rec(&b[1], &key, b[0].hash, "co-1", 2);
    make_rec(&b[2], &key, b[1].hash, "co-2", 3);
    v = call_script(b[0].hash, key.id, &b[1], 2);
    cr_assert_eq(v.status, WK_AA_OK);
    cr_assert_eq(v.count, 3);
    mark = sg_str(&E, "GET %s", b[1].seen_key);
    cr_assert_str_eq(mark, "11");
    free(mark);
    mark = sg_str(&E, "GETRANGE %s 2 2", b[2].seen_key);
    cr_assert_str_eq(mark, "1");
    free(mark);
    cr_assert_gt(sg_ll(&E, "TTL %s", b[2].seen_key), 0);
    /* the gap before seq 3 holds NULs, as a SETRANGE would leave it */
    redisReply *raw = redisCommand(E.c, "GET %s", b[2].seen_key);
    cr_assert(raw && raw->type == REDIS_REPLY_STRING && raw->len == 3 && !memcmp(raw->str, "\0\0" "1", 3));
    freeReplyObject(raw);
    /* the stored links are the chain's: the head before, then the record before */
    log = redisCommand(E.c, "XRANGE %s - +", PJ_AUDIT_LOG_KEY);
    cr_assert(log && log->elements == 3);
    cr_assert_str_eq(field_of(log->element[1], "prev"), b[0].hash);
    cr_assert_str_eq(field_of(log->element[2], "prev"), b[1].hash);
    freeReplyObject(log);

    /* records whose prev does not follow the head, or each other: an error, nothing sent */
    rec_buf y[2];
    make_rec(&y[0], &key, b[1].hash, "co-4", 1);   /* the head is b[2]'s hash */
    wk_aa_record yr[2] = {y[0].r};
    wk_aa_call bad = {.head = b[2].hash, .key_id = key.id, .seen_ttl_s = 1000, .recs = yr, .n = 1};
    char err[256];
    cr_assert_eq(wk_audit_append(E.c, &bad, &v, err, sizeof err), -1);
    cr_assert(strstr(err, "prev"), "%s", err);
    make_rec(&y[0], &key, b[2].hash, "co-4", 1);
    make_rec(&y[1], &key, b[2].hash, "co-4", 2);   /* should follow y[0] */
    yr[0] = y[0].r;
    yr[1] = y[1].r;
    bad.n = 2;
    cr_assert_eq(wk_audit_append(E.c, &bad, &v, err, sizeof err), -1);
    cr_assert(strstr(err, "record 1"), "%s", err);
    /* one event named twice in a call: refused, nothing written */
    make_rec(&y[1], &key, y[0].hash, "co-4", 1);
    yr[1] = y[1].r;
    cr_assert_eq(wk_audit_append(E.c, &bad, &v, err, sizeof err), 0, "%s", err);
    cr_assert_eq(v.status, WK_AA_MOVED);
    cr_assert_str_eq(v.head, b[2].hash);
    cr_assert_eq(sg_ll(&E, "XLEN %s", PJ_AUDIT_LOG_KEY), 3);
    cr_assert_eq(sg_ll(&E, "EXISTS %s", y[0].seen_key), 0, "a refused call marks nothing");

    /* another key, or none, on a keyed chain */
    rec_buf x;
    make_rec(&x, NULL, b[2].hash, "co-3", 1);
    v = call_script(b[2].hash, PJ_AUDIT_UNKEYED, &x, 1);
    cr_assert_eq(v.status, WK_AA_WRONG_KEY);
    cr_assert_str_eq(v.key_id, key.id);
    v = call_script(b[2].hash, "0123456789abcdef", &x, 1);
    cr_assert_eq(v.status, WK_AA_WRONG_KEY);
    cr_assert_eq(sg_ll(&E, "XLEN %s", PJ_AUDIT_LOG_KEY), 3);

    pj_audit_report rep = verify_with(&(pj_audit_opts){.key = &key});
    cr_assert(rep.intact, "%s", rep.problem);
    cr_assert_eq(rep.count, 3);

    /* seqs out of order and with a gap in one aggregate, and another
     * aggregate's: each mark gets exactly its seqs */
    rec_buf z[3];
    make_rec(&z[0], &key, b[2].hash, "co-5", 3);
    make_rec(&z[1], &key, z[0].hash, "co-6", 2);
    make_rec(&z[2], &key, z[1].hash, "co-5", 1);
    v = call_script(b[2].hash, key.id, z, 3);
    cr_assert_eq(v.status, WK_AA_OK);
    cr_assert_eq(v.count, 6);
    raw = redisCommand(E.c, "GET %s", z[0].seen_key);
    cr_assert(raw && raw->type == REDIS_REPLY_STRING && raw->len == 3 && !memcmp(raw->str, "1\0" "1", 3));
    freeReplyObject(raw);
    raw = redisCommand(E.c, "GET %s", z[1].seen_key);
    cr_assert(raw && raw->type == REDIS_REPLY_STRING && raw->len == 2 && !memcmp(raw->str, "\0" "1", 2));
    freeReplyObject(raw);
    /* the gap filled later; a seq already marked in the same call refused */
    make_rec(&z[0], &key, z[2].hash, "co-5", 2);
    make_rec(&z[1], &key, z[0].hash, "co-5", 3);
    v = call_script(z[2].hash, key.id, z, 2);
    cr_assert_eq(v.status, WK_AA_MOVED);
    v = call_script(z[2].hash, key.id, z, 1);
    cr_assert_eq(v.status, WK_AA_OK);
    mark = sg_str(&E, "GET %s", z[0].seen_key);
    cr_assert_str_eq(mark, "111");
    free(mark);
    rep = verify_with(&(pj_audit_opts){.key = &key});
    cr_assert(rep.intact, "%s", rep.problem);
    cr_assert_eq(rep.count, 7);
}

Test(audit, legacy_audit_keys_are_renamed_at_start)
{
    long long n = build_log();
    /* the layout before the {audit} hash tag */
    sg_ll(&E, "DEL %s%s", PJ_AUDIT_SEEN_PREFIX, "checkout:co-000");
    freeReplyObject(redisCommand(E.c, "RENAME %s chorus:audit:log", PJ_AUDIT_LOG_KEY));
    freeReplyObject(redisCommand(E.c, "RENAME %s chorus:audit:head", PJ_AUDIT_HEAD_KEY));
    sg_ll(&E, "HSET chorus:audit:seen checkout:co-000 1111");
    sg_restart(&E, 0);
    sx_saga(E.s, SX_SUCCESS, "co-after", "c1", "p1", 1);
    wait_audited(n + 4);
    cr_assert_eq(sg_ll(&E, "EXISTS chorus:audit:log chorus:audit:head chorus:audit:seen"), 0);
    pj_audit_report rep = verify();
    cr_assert(rep.intact, "chain broken at %lld: %s", rep.bad_pos, rep.problem);
    cr_assert_eq(rep.count, n + 4, "the old chain goes on under the new names");
}

/* Writes text to the file path. */
static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

#define H1 "1111111111111111111111111111111111111111111111111111111111111111"
#define H2 "2222222222222222222222222222222222222222222222222222222222222222"

Test(audit, head_file_lines_are_validated)
{
    char path[400], err[300];
    pj_audit_anchor a;
    snprintf(path, sizeof path, "%s/head", E.r.dir);

    /* out of order (two copies), and a torn last line: the highest whole line */
    write_file(path, "3 " H1 "\n9 " H2 "\n5 " H1 "\n12 33");
    cr_assert_eq(pj_audit_head_file_read(path, &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a.count, 9);
    cr_assert_str_eq(a.hash, H2);
    cr_assert_eq(a.line, 2);

    write_file(path, "");
    cr_assert_eq(pj_audit_head_file_read(path, &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a.count, 0, "an empty file vouches for nothing");

    write_file(path, "3 " H1 "\nthree " H1 "\n");
    cr_assert_eq(pj_audit_head_file_read(path, &a, err, sizeof err), -1);
    cr_assert(strstr(err, "line 2"), "%s", err);
    write_file(path, "3 " H1 "\n3 " H2 "\n");
    cr_assert_eq(pj_audit_head_file_read(path, &a, err, sizeof err), -1);
    cr_assert(strstr(err, "disagree"), "%s", err);
    cr_assert_eq(pj_audit_head_file_read("/nonexistent/head", &a, err, sizeof err), -1);
    cr_assert(strstr(err, "/nonexistent/head"), "%s", err);

    /* the verifier cannot verify against a broken file: exit 2, saying why */
    char env[420], out[1024];
    snprintf(env, sizeof env, "AUDIT_HEAD_FILE=%s", path);
    cr_assert_eq(run_verify_cli_with(NULL, (const char *const[]){env, NULL}, out, sizeof out), 2, "%s", out);
    cr_assert(strstr(out, "disagree"), "%s", out);
}

/* Writes the records and seen marks of checkout's first max events (chained
 * from the head) as the script before this one did: every field sent, prev
 * included, a SETRANGE per record, an EXPIRE per aggregate, then the head.
 * Returns how many events the checkout's history holds. */
static size_t append_as_previous_script(const char *checkout, size_t max)
{
    size_t n = 0;
    es_event **evs = sx_history(E.s, checkout, &n);
    cr_assert(evs && n > 0);
    char *h = sg_str(&E, "HGET %s hash", PJ_AUDIT_HEAD_KEY);
    char prev[PJ_AUDIT_HEX], hash[PJ_AUDIT_HEX], digest[PJ_AUDIT_HEX], seen[128], off[24];
    snprintf(prev, sizeof prev, "%s", h ? h : pj_audit_genesis);
    long long count = h ? sg_ll(&E, "HGET %s count", PJ_AUDIT_HEAD_KEY) : 0;
    free(h);
    for (size_t i = 0; i < n && i < max; i++) {
        const es_event *ev = evs[i];
        pj_audit_digest(ev->payload, ev->payload_len, digest);
        pj_audit_rec rec = {ev->event_id, ev->entry_id, ev->type, ev->aggregate_id, digest};
        pj_audit_hash(NULL, prev, &rec, hash);
        const char *argv[] = {"XADD",   PJ_AUDIT_LOG_KEY, "*",    "event_id", rec.event_id, "entry_id",
                              rec.entry_id, "type",       rec.type, "aggregate_id", rec.aggregate_id,
                              "digest", rec.digest,       "prev", prev,     "hash",     hash};
        freeReplyObject(redisCommandArgv(E.c, 17, argv, NULL));
        snprintf(seen, sizeof seen, "%s%s:%s", PJ_AUDIT_SEEN_PREFIX, ev->aggregate, ev->aggregate_id);
        snprintf(off, sizeof off, "%lld", (long long)ev->seq - 1);
        freeReplyObject(redisCommand(E.c, "SETRANGE %s %s 1", seen, off));
        freeReplyObject(redisCommand(E.c, "EXPIRE %s 604800", seen));
        snprintf(prev, sizeof prev, "%s", hash);
        count++;
    }
    freeReplyObject(redisCommand(E.c, "HSET %s hash %s count %lld", PJ_AUDIT_HEAD_KEY, prev, count));
    es_events_free(evs, n);
    return n;
}

Test(audit, chain_and_marks_of_the_previous_script_are_continued_once_per_event)
{
    long long events = append_sagas(8);
    append_as_previous_script("co-000", SIZE_MAX);
    append_as_previous_script("co-001", SIZE_MAX);
    size_t n2 = append_as_previous_script("co-002", 2);   /* a saga half audited */
    cr_assert_gt(n2, 2);
    long long old = sg_ll(&E, "XLEN %s", PJ_AUDIT_LOG_KEY);
    cr_assert_gt(old, 4);
    cr_assert(verify_with(&(pj_audit_opts){.deep = true}).intact, "the previous script's chain verifies");

    /* the worker reads the bus from its start: the events already audited
     * are skipped by their marks, the others get their record, chained on */
    sg_spawn(&E, "audit", (const char *const[]){"BATCH_SIZE=7", NULL});
    wait_audited(events);
    cr_assert_eq(sg_ll(&E, "XLEN %s", PJ_AUDIT_LOG_KEY), events);
    redisReply *log = redisCommand(E.c, "XRANGE %s - +", PJ_AUDIT_LOG_KEY);
    cr_assert(log && log->type == REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < log->elements; i++)
        sg_ll(&E, "HINCRBY test:audit:ids %s 1", field_of(log->element[i], "event_id"));
    freeReplyObject(log);
    cr_assert_eq(sg_ll(&E, "HLEN test:audit:ids"), events, "each event once");
    pj_audit_report rep = verify_with(&(pj_audit_opts){.deep = true});
    cr_assert(rep.intact, "chain broken at %lld: %s", rep.bad_pos, rep.problem);
    cr_assert_eq(rep.count, events);
    char out[1024];
    cr_assert_eq(run_verify_cli_with((const char *const[]){"--deep", NULL}, NULL, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "\"intact\":true"), "%s", out);

    /* the half-audited saga's mark, begun by SETRANGE, completed by the new script */
    char seen[128];
    snprintf(seen, sizeof seen, "%scheckout:co-002", PJ_AUDIT_SEEN_PREFIX);
    char *mark = sg_str(&E, "GET %s", seen);
    cr_assert(mark && strlen(mark) == n2 && strspn(mark, "1") == n2, "%s", mark ? mark : "(nil)");
    free(mark);
    cr_assert_gt(sg_ll(&E, "TTL %s", seen), 0);
}

/* Calls of cmd since the last CONFIG RESETSTAT (INFO commandstats). */
static long long command_calls(const char *cmd)
{
    long long n = tf_redis_command_calls(E.c, cmd);
    cr_assert_geq(n, 0, "INFO commandstats failed");
    return n;
}

Test(audit, a_lone_worker_reads_the_marks_once_then_sends_each_batch_in_one_call)
{
    freeReplyObject(redisCommand(E.c, "CONFIG RESETSTAT"));
    sg_spawn(&E, "audit", (const char *const[]){"BATCH_SIZE=5", NULL});
    long long events = append_sagas(12);
    wait_audited(events);
    /* the first batch reads the head and marks; every later one is chained
     * from the head the worker's last append left, checked by the script */
    cr_assert_eq(command_calls("mget"), 1, "the seen marks were read more than once");
    cr_assert_eq(command_calls("getrange") + command_calls("setrange"), 0);
    cr_assert_eq(sg_ll(&E, "XLEN %s", PJ_AUDIT_LOG_KEY), events);
    pj_audit_report rep = verify_with(&(pj_audit_opts){.deep = true});
    cr_assert(rep.intact, "chain broken at %lld: %s", rep.bad_pos, rep.problem);
    cr_assert_eq(rep.count, events);
}
