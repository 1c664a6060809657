/* test_cluster.c - common/cluster.h against a real Redis Cluster (3 masters
 * + 3 replicas, tests/support/cluster_fixture.h) and against a single
 * redis-server: routing by slot, scripts, pipelines, MOVED after a
 * migration, ASK during one, a manual failover and a killed master.
 * Each test has its own cluster (about 2 s to start). */
#include "common/cluster.h"
#include "common/names.h"
#include "common/redis.h"
#include "event_store/store.h"
#include "tests/support/cluster_fixture.h"
#include "tests/support/proc.h"
#include "tests/support/redis_fixture.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tf_cluster g_cl;
static cm_cluster *g_cc;

static void cluster_up(void)
{
    cr_assert_eq(tf_cluster_start(&g_cl, NULL), 0, "cluster did not start");
    char err[512] = "";
    g_cc = cm_cluster_open(g_cl.url, 5000, err, sizeof err);
    cr_assert_not_null(g_cc, "cm_cluster_open: %s", err);
    cr_assert(cm_cluster_is_cluster(g_cc));
}

static void cluster_down(void)
{
    cm_cluster_free(g_cc);
    g_cc = NULL;
    tf_cluster_stop(&g_cl);
}

static int slot_of(const char *key)
{
    return cm_key_slot(key, strlen(key));
}

/* The port cm_cluster currently routes slot to. */
static int routed_port(int slot)
{
    cm_redis_url u;
    cr_assert_eq(cm_cluster_slot_addr(g_cc, slot, &u), 0);
    return u.port;
}

/* SET key value through the client; asserts +OK. */
static void set_key(const char *key, const char *value)
{
    redisReply *r = cm_cluster_command(g_cc, slot_of(key), "SET %s %s", key, value);
    cr_assert_not_null(r, "SET %s: %s", key, cm_cluster_errstr(g_cc));
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "SET %s: %s", key, r->str);
    freeReplyObject(r);
}

/* GET key through the client; asserts the value. */
static void expect_key(const char *key, const char *value)
{
    redisReply *r = cm_cluster_command(g_cc, slot_of(key), "GET %s", key);
    cr_assert_not_null(r, "GET %s: %s", key, cm_cluster_errstr(g_cc));
    cr_assert_eq(r->type, REDIS_REPLY_STRING, "GET %s: type %d %s", key, r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    cr_assert_str_eq(r->str, value, "GET %s", key);
    freeReplyObject(r);
}

/* GET key on node i directly, no redirection followed: the value, or the
 * error text (MOVED ...), or "(nil)". Caller frees. */
static char *raw_get(int i, const char *key, bool asking)
{
    redisContext *c = tf_redis_connect(&g_cl.node[i]);
    if (asking) {
        redisReply *a = redisCommand(c, "ASKING");
        freeReplyObject(a);
    }
    redisReply *r = redisCommand(c, "GET %s", key);
    cr_assert_not_null(r);
    char *out = r->type == REDIS_REPLY_NIL ? strdup("(nil)") : strndup(r->str, r->len);
    freeReplyObject(r);
    redisFree(c);
    return out;
}

/* Count of calls of command `cmd` in node i's INFO commandstats. */
static long long calls_on(int i, const char *cmd)
{
    redisContext *c = tf_redis_connect(&g_cl.node[i]);
    redisReply *r = redisCommand(c, "INFO commandstats");
    cr_assert(r && r->type == REDIS_REPLY_STRING);
    char field[64], val[256];
    snprintf(field, sizeof field, "cmdstat_%s", cmd);
    tf_info_field(r->str, field, val, sizeof val);
    long long n = 0;
    const char *p = strstr(val, "calls=");
    if (p)
        n = atoll(p + 6);
    freeReplyObject(r);
    redisFree(c);
    return n;
}

/* A key "<prefix><n>" whose slot's master is node m (and, if avoid >= 0,
 * whose slot is not avoid). */
static void key_on(int m, const char *prefix, int avoid, char *out, size_t outlen)
{
    for (int n = 0; n < 100000; n++) {
        snprintf(out, outlen, "%s%d", prefix, n);
        int s = slot_of(out);
        if (s != avoid && tf_cluster_master_of(&g_cl, s) == m)
            return;
    }
    cr_assert_fail("no key found on node %d", m);
}

/* The script used below: writes KEYS[i] = ARGV[1] for every key and answers
 * the port of the server that ran it. */
static const char k_where_src[] =
    "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1]) end\n"
    "return tonumber(string.match(redis.call('INFO', 'server'), 'tcp_port:(%d+)'))\n";

TestSuite(cluster, .init = cluster_up, .fini = cluster_down, .timeout = 120);

Test(cluster, commands_reach_the_master_of_their_slot)
{
    enum { N = 200 };
    char key[32], val[32];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "k:%d", i);
        snprintf(val, sizeof val, "v%d", i);
        set_key(key, val);
    }
    /* Each key is on its slot's master: a plain GET there (no redirection
     * followed) finds it, and every master got some. */
    int per_node[TF_CLUSTER_NODES] = {0};
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "k:%d", i);
        snprintf(val, sizeof val, "v%d", i);
        int m = tf_cluster_master_of(&g_cl, slot_of(key));
        cr_assert(m >= 0);
        char *got = raw_get(m, key, false);
        cr_assert_str_eq(got, val, "%s on node %d", key, m);
        free(got);
        per_node[m]++;
        expect_key(key, val);
    }
    int masters = 0;
    for (int i = 0; i < TF_CLUSTER_NODES; i++)
        masters += per_node[i] > 0;
    cr_assert_eq(masters, 3, "200 keys should spread over the 3 masters");

    /* One slot per master reaches each master once: DBSIZE adds up. */
    int slots[8];
    cr_assert_eq(cm_cluster_master_slots(g_cc, slots, 8), 3);
    long long total = 0;
    for (int i = 0; i < 3; i++) {
        redisReply *r = cm_cluster_command(g_cc, slots[i], "DBSIZE");
        cr_assert(r && r->type == REDIS_REPLY_INTEGER);
        cr_assert_eq(r->integer, per_node[tf_cluster_master_of(&g_cl, slots[i])]);
        total += r->integer;
        freeReplyObject(r);
    }
    cr_assert_eq(total, N);
}

Test(cluster, script_with_keys_in_one_slot_runs_on_their_master)
{
    cm_script s = {.src = k_where_src};
    /* One hash tag per master: the same script runs on all three (loaded
     * on the first, NOSCRIPT then recovered on the others). */
    int seen = 0;
    for (int m = 0; m < TF_CLUSTER_NODES; m++) {
        if (!tf_cluster_is_master(&g_cl, m))
            continue;
        char tag[32], k1[64], k2[64];
        key_on(m, "acct", -1, tag, sizeof tag);
        snprintf(k1, sizeof k1, "{%s}.balance", tag);
        snprintf(k2, sizeof k2, "{%s}.history", tag);
        cm_argv a = {0};
        cm_argv_adds(&a, k1);
        cm_argv_adds(&a, k2);
        cm_argv_adds(&a, "ran");
        redisReply *r = cm_cluster_script(g_cc, &s, 2, &a);
        cr_assert_not_null(r, "%s", cm_cluster_errstr(g_cc));
        cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "%s", r->type == REDIS_REPLY_ERROR ? r->str : "");
        cr_assert_eq(r->integer, g_cl.node[m].port, "script for {%s} ran on port %lld, its master is %d", tag,
                     r->integer, g_cl.node[m].port);
        freeReplyObject(r);
        char *got = raw_get(m, k2, false);
        cr_assert_str_eq(got, "ran");
        free(got);
        cm_argv_free(&a);
        seen++;
    }
    cr_assert_eq(seen, 3, "three masters");
    cr_assert_eq(strlen(s.sha), 40, "the script's SHA was learned");
}

Test(cluster, cross_slot_script_keys_are_refused_before_sending)
{
    cm_script s = {.src = k_where_src};
    cm_argv a = {0};
    cm_argv_adds(&a, "{user1}.a");
    cm_argv_adds(&a, "{user2}.b");   /* another tag, another slot */
    cm_argv_adds(&a, "x");
    cr_assert_neq(slot_of("{user1}.a"), slot_of("{user2}.b"));
    redisReply *r = cm_cluster_script(g_cc, &s, 2, &a);
    cr_assert_null(r);
    cr_assert_eq(cm_cluster_err(g_cc), CM_CLUSTER_ECROSSSLOT);
    const char *e = cm_cluster_errstr(g_cc);
    cr_assert(strstr(e, "{user1}.a") && strstr(e, "{user2}.b") && strstr(e, "slot"), "unclear error: %s", e);

    cm_pipe *p = cm_pipe_new(g_cc);
    cr_assert_eq(cm_pipe_script(p, &s, 2, &a), CM_CLUSTER_ECROSSSLOT);
    cr_assert_eq(cm_pipe_count(p), 0, "a refused call is not queued");
    cm_pipe_free(p);
    cm_argv_free(&a);

    /* Nothing reached any node: no EVAL, EVALSHA or SCRIPT LOAD anywhere,
     * and neither key exists. */
    for (int i = 0; i < TF_CLUSTER_NODES; i++) {
        cr_assert_eq(calls_on(i, "evalsha"), 0, "node %d ran EVALSHA", i);
        cr_assert_eq(calls_on(i, "eval"), 0, "node %d ran EVAL", i);
        cr_assert_eq(calls_on(i, "script|load"), 0, "node %d ran SCRIPT LOAD", i);
    }
    redisReply *x = cm_cluster_command(g_cc, slot_of("{user1}.a"), "EXISTS {user1}.a");
    cr_assert(x && x->type == REDIS_REPLY_INTEGER && x->integer == 0);
    freeReplyObject(x);
}

Test(cluster, moved_after_a_slot_migration_is_followed)
{
    const char *key = "{order77}.state";
    int slot = slot_of(key);
    set_key(key, "before");
    int src = tf_cluster_master_of(&g_cl, slot);
    cr_assert_eq(routed_port(slot), g_cl.node[src].port);
    int dst = -1;
    for (int i = 0; i < TF_CLUSTER_NODES && dst < 0; i++)
        if (i != src && tf_cluster_is_master(&g_cl, i))
            dst = i;
    cr_assert_eq(tf_cluster_migrate_slot(&g_cl, slot, dst, true), 0);

    /* The client still believes src owns the slot: src answers MOVED. */
    char *got = raw_get(src, key, false);
    cr_assert(!strncmp(got, "MOVED", 5), "src should redirect, said %s", got);
    free(got);
    expect_key(key, "before");
    set_key(key, "after");
    cr_assert_eq(routed_port(slot), g_cl.node[dst].port, "the map follows MOVED");
    got = raw_get(dst, key, false);
    cr_assert_str_eq(got, "after");
    free(got);
}

Test(cluster, ask_during_a_migration_is_followed)
{
    const char *key = "{cart9}.items", *fresh = "{cart9}.fresh";
    int slot = slot_of(key);
    set_key(key, "moved-value");
    int src = tf_cluster_master_of(&g_cl, slot);
    int dst = -1;
    for (int i = 0; i < TF_CLUSTER_NODES && dst < 0; i++)
        if (i != src && tf_cluster_is_master(&g_cl, i))
            dst = i;
    /* Slot migrating, its key already on dst, the slot still src's. */
    cr_assert_eq(tf_cluster_migrate_slot(&g_cl, slot, dst, false), 0);
    char *got = raw_get(src, key, false);
    cr_assert(!strncmp(got, "ASK", 3), "src should answer ASK for a moved key, said %s", got);
    free(got);

    long long asking_before = calls_on(dst, "asking");
    expect_key(key, "moved-value");
    set_key(fresh, "new");   /* a new key of a migrating slot goes to dst too */
    cr_assert_geq(calls_on(dst, "asking") - asking_before, 2, "ASKING was sent to dst");
    got = raw_get(dst, fresh, true);
    cr_assert_str_eq(got, "new");
    free(got);
    /* ASK is one-off: the map still says src. */
    cr_assert_eq(routed_port(slot), g_cl.node[src].port);
}

Test(cluster, pipeline_across_nodes_returns_replies_in_order)
{
    enum { N = 300 };
    char key[32];
    /* Warm the map, then move one slot with keys in the pipeline, so some
     * replies come back MOVED and are redone mid-pipeline. */
    set_key("warm", "1");
    const char *moving = "{p}moving";
    int mslot = slot_of(moving);
    set_key(moving, "m");
    int src = tf_cluster_master_of(&g_cl, mslot), dst = -1;
    for (int i = 0; i < TF_CLUSTER_NODES && dst < 0; i++)
        if (i != src && tf_cluster_is_master(&g_cl, i))
            dst = i;
    cr_assert_eq(tf_cluster_migrate_slot(&g_cl, mslot, dst, true), 0);

    cm_script s = {.src = k_where_src};
    cm_pipe *p = cm_pipe_new(g_cc);
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "pk:%d", i);
        cm_pipe_command(p, slot_of(key), "INCRBY %s %d", key, i);
        if (i % 50 == 0) {
            cm_pipe_command(p, mslot, "GET %s", moving);
            cm_argv a = {0};
            cm_argv_adds(&a, key);
            cm_argv_adds(&a, "s");
            cr_assert_eq(cm_pipe_script(p, &s, 1, &a), 0);
            cm_argv_free(&a);
        }
    }
    cr_assert_eq(cm_pipe_exec(p), 0, "%s", cm_cluster_errstr(g_cc));
    size_t j = 0;
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "pk:%d", i);
        redisReply *r = cm_pipe_take(p, j++);
        cr_assert(r && r->type == REDIS_REPLY_INTEGER, "reply %zu", j - 1);
        cr_assert_eq(r->integer, i, "INCRBY %s answered %lld", key, r->integer);
        freeReplyObject(r);
        if (i % 50 == 0) {
            r = cm_pipe_take(p, j++);
            cr_assert(r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "m"), "GET %s in the pipeline",
                      moving);
            freeReplyObject(r);
            r = cm_pipe_take(p, j++);
            cr_assert(r && r->type == REDIS_REPLY_INTEGER, "script reply");
            cr_assert_eq(r->integer, g_cl.node[tf_cluster_master_of(&g_cl, slot_of(key))].port);
            freeReplyObject(r);
        }
    }
    cr_assert_eq(j, cm_pipe_count(p));
    cr_assert_null(cm_pipe_take(p, 0), "a reply is handed out once");
    cm_pipe_free(p);
    cr_assert_eq(routed_port(mslot), g_cl.node[dst].port);
}

Test(cluster, pipe_node_names_the_master_that_answered_after_a_redirect)
{
    const char *key = "{wait42}.x";
    int slot = slot_of(key);
    set_key(key, "v");
    int src = tf_cluster_master_of(&g_cl, slot), dst = -1;
    for (int i = 0; i < TF_CLUSTER_NODES && dst < 0; i++)
        if (i != src && tf_cluster_is_master(&g_cl, i))
            dst = i;
    char on_src[32], on_dst[32];
    key_on(src, "ns:", slot, on_src, sizeof on_src);
    key_on(dst, "nd:", slot, on_dst, sizeof on_dst);
    cr_assert_eq(tf_cluster_migrate_slot(&g_cl, slot, dst, true), 0);

    /* The map still says src: the GET is sent there, answered MOVED and
     * redone on dst; keyless PINGs go where their slots say. */
    cm_pipe *p = cm_pipe_new(g_cc);
    cm_pipe_command(p, slot, "GET %s", key);
    cm_pipe_command(p, slot_of(on_src), "PING");
    cm_pipe_command(p, slot_of(on_dst), "PING");
    cr_assert_eq(cm_pipe_exec(p), 0, "%s", cm_cluster_errstr(g_cc));
    redisReply *r = cm_pipe_take(p, 0);
    cr_assert(r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "v"));
    freeReplyObject(r);
    cr_assert_geq(cm_pipe_node(p, 0), 0);
    cr_assert_eq(cm_pipe_node(p, 0), cm_pipe_node(p, 2), "the redirected GET was answered by dst");
    cr_assert_neq(cm_pipe_node(p, 0), cm_pipe_node(p, 1), "not by src");
    cr_assert_eq(cm_pipe_node(p, 3), -1, "no such command");
    cm_pipe_free(p);
}

/* INCRs {tag}a and {tag}b in one transaction; asserts EXEC's [1, 1] style
 * answer equals want for both. */
static void incr_both(const char *a, const char *b, long long want)
{
    cm_argv cmds[2] = {{0}, {0}};
    cm_argv_adds(&cmds[0], "INCR");
    cm_argv_adds(&cmds[0], a);
    cm_argv_adds(&cmds[1], "INCR");
    cm_argv_adds(&cmds[1], b);
    redisReply *r = cm_cluster_multi(g_cc, slot_of(a), cmds, 2);
    cr_assert_not_null(r, "%s", cm_cluster_errstr(g_cc));
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "EXEC answered %s", r->type == REDIS_REPLY_ERROR ? r->str : "?");
    cr_assert_eq(r->elements, 2);
    cr_assert_eq(r->element[0]->integer, want);
    cr_assert_eq(r->element[1]->integer, want);
    freeReplyObject(r);
    cm_argv_free(&cmds[0]);
    cm_argv_free(&cmds[1]);
}

Test(cluster, transaction_is_resent_whole_after_moved_and_ask)
{
    const char *a = "{tx}a", *b = "{tx}b";
    int slot = slot_of(a);
    incr_both(a, b, 1);
    int src = tf_cluster_master_of(&g_cl, slot), dst = -1;
    for (int i = 0; i < TF_CLUSTER_NODES && dst < 0; i++)
        if (i != src && tf_cluster_is_master(&g_cl, i))
            dst = i;
    /* Migrating, keys moved: the queued INCRs get ASK, EXEC EXECABORT;
     * the transaction is redone on dst behind ASKING. A part resent alone
     * would make a counter 3. */
    cr_assert_eq(tf_cluster_migrate_slot(&g_cl, slot, dst, false), 0);
    long long asking = calls_on(dst, "asking");
    incr_both(a, b, 2);
    cr_assert_eq(calls_on(dst, "asking") - asking, 1, "one ASKING ahead of the whole transaction");
    /* Then the migration ends, the slot is dst's: MOVED, the same. */
    cr_assert_eq(tf_cluster_migrate_slot(&g_cl, slot, dst, true), 0);
    incr_both(a, b, 3);
    cr_assert_eq(routed_port(slot), g_cl.node[dst].port);
    char *got = raw_get(dst, a, false);
    cr_assert_str_eq(got, "3");
    free(got);
}

Test(cluster, manual_failover_is_followed_to_the_new_master)
{
    const char *key = "{fo}.k";
    int slot = slot_of(key);
    set_key(key, "v1");
    int m = tf_cluster_master_of(&g_cl, slot);
    int r = tf_cluster_replica_of(&g_cl, m);
    cr_assert(r >= 0, "master %d has no replica", m);
    cr_assert_eq(tf_cluster_failover(&g_cl, r), 0);
    cr_assert(!tf_cluster_is_master(&g_cl, m), "old master %d was demoted", m);

    expect_key(key, "v1");   /* the old connection to m answers MOVED */
    set_key(key, "v2");
    cr_assert_eq(routed_port(slot), g_cl.node[r].port);
    char *got = raw_get(r, key, false);
    cr_assert_str_eq(got, "v2");
    free(got);
}

Test(cluster, killed_master_is_retried_until_its_replica_takes_over)
{
    const char *key = "{kill}.k";
    int slot = slot_of(key);
    set_key(key, "kept");
    int m = tf_cluster_master_of(&g_cl, slot);
    int r = tf_cluster_replica_of(&g_cl, m);
    cr_assert(r >= 0);
    /* The write is on the replica before the master dies. */
    redisReply *w = cm_cluster_command(g_cc, slot, "WAIT 1 5000");
    cr_assert(w && w->type == REDIS_REPLY_INTEGER && w->integer == 1, "WAIT");
    freeReplyObject(w);

    cr_assert_eq(tf_redis_kill9(&g_cl.node[m]), 0);
    /* Failure detection alone takes cluster-node-timeout (2 s): a 300 ms
     * deadline gives up, with an error naming the reason. */
    cm_cluster_set_retry(g_cc, 300);
    long long t0 = tf_now_ms();
    redisReply *x = cm_cluster_command(g_cc, slot, "GET %s", key);
    long long spent = tf_now_ms() - t0;
    cr_assert_null(x, "answered while its master is dead and not yet replaced");
    cr_assert_eq(cm_cluster_err(g_cc), CM_CLUSTER_EUNAVAIL);
    cr_assert_str_not_empty(cm_cluster_errstr(g_cc));
    cr_assert_lt(spent, 300 + 5000 + 1000, "gave up after %lld ms (deadline 300 + one timeout)", spent);

    /* With a deadline past detection + election, the same call rides it out. */
    cm_cluster_set_retry(g_cc, 30000);
    expect_key(key, "kept");
    set_key(key, "after");
    cr_assert(tf_cluster_is_master(&g_cl, r), "replica %d was promoted", r);
    cr_assert_eq(routed_port(slot), g_cl.node[r].port);
}

/* Best effort on a frozen master (SIGSTOP: it neither answers nor
 * refuses): a call gives up after the budget instead of the command
 * timeout (5 s here), the frozen node is then skipped at once for the rest
 * of the run while the other masters' commands of a pipeline are answered,
 * and with best effort off the same call waits for it again. */
Test(cluster, best_effort_gives_up_on_a_frozen_master_and_skips_it)
{
    char frozen_key[32], other_key[32];
    key_on(0, "be.f", -1, frozen_key, sizeof frozen_key);
    key_on(1, "be.o", -1, other_key, sizeof other_key);
    set_key(frozen_key, "f");
    set_key(other_key, "o");
    int m = tf_cluster_master_of(&g_cl, slot_of(frozen_key));
    cr_assert_eq(m, 0);
    pid_t pid = g_cl.node[m].server_pid;
    cm_cluster_skips_begin(g_cc);
    cm_cluster_set_best_effort(g_cc, 200);
    cr_assert_eq(cm_cluster_best_effort(g_cc), 200);
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    long long t0 = tf_now_ms();
    redisReply *x = cm_cluster_command(g_cc, slot_of(frozen_key), "GET %s", frozen_key);
    long long spent = tf_now_ms() - t0;
    bool was_null = x == NULL;
    freeReplyObject(x);
    int err = cm_cluster_err(g_cc);

    /* the same run: the frozen master's command is not even sent */
    cm_pipe *p = cm_pipe_new(g_cc);
    cm_pipe_command(p, slot_of(frozen_key), "GET %s", frozen_key);
    cm_pipe_command(p, slot_of(other_key), "GET %s", other_key);
    long long t1 = tf_now_ms();
    int prc = cm_pipe_exec(p);
    long long pspent = tf_now_ms() - t1;
    redisReply *rf = cm_pipe_take(p, 0), *ro = cm_pipe_take(p, 1);
    char where[256];
    int nskips = cm_cluster_skips(g_cc, where, sizeof where);
    cm_cluster_set_best_effort(g_cc, 0);
    kill(pid, SIGCONT);

    cr_assert(was_null, "a frozen master answered");
    cr_assert_eq(err, CM_CLUSTER_EUNAVAIL);
    cr_assert_lt(spent, 2500, "gave up after %lld ms (budget 200 ms; the command timeout is 5000)", spent);
    cr_assert_eq(prc, CM_CLUSTER_EUNAVAIL);
    cr_assert_null(rf, "the skipped master's command has a reply");
    cr_assert(ro && ro->type == REDIS_REPLY_STRING && !strcmp(ro->str, "o"), "the other master's reply");
    cr_assert_lt(pspent, 1000, "the pipeline took %lld ms with its frozen node skipped", pspent);
    char port[16];
    snprintf(port, sizeof port, ":%d", g_cl.node[m].port);
    cr_assert_eq(nskips, 1, "skipped nodes: %d (%s)", nskips, where);
    cr_assert(strstr(where, port), "the skipped node is named: %s", where);
    freeReplyObject(rf);
    freeReplyObject(ro);
    cm_pipe_free(p);

    /* best effort off: calls wait for the node again (here it answers) */
    expect_key(frozen_key, "f");
}

/* Best effort caps the connections' timeouts only while it is on: a client
 * opened without a timeout waits for a command longer than the budget
 * again once it is off. */
Test(cluster, best_effort_off_gives_the_client_its_own_timeout_back)
{
    char err[512] = "";
    cm_cluster *cc = cm_cluster_open(g_cl.url, 0, err, sizeof err);
    cr_assert_not_null(cc, "%s", err);
    char key[32];
    key_on(0, "be.t", -1, key, sizeof key);
    cm_cluster_skips_begin(cc);
    cm_cluster_set_best_effort(cc, 100);
    redisReply *r = cm_cluster_command(cc, slot_of(key), "SET %s 0", key);
    cr_assert(r && r->type == REDIS_REPLY_STATUS, "SET: %s", cm_cluster_errstr(cc));
    freeReplyObject(r);
    cm_cluster_set_best_effort(cc, 0);
    /* a script that counts its runs and takes 400 ms, four times the budget:
     * cut short by a timeout left over, the client would send it again */
    r = cm_cluster_command(cc, slot_of(key), "EVAL %s 1 %s",
                           "local n = redis.call('INCR', KEYS[1]) local t = redis.call('TIME') "
                           "local s = t[1] * 1e6 + t[2] "
                           "repeat local u = redis.call('TIME') until u[1] * 1e6 + u[2] - s > 400000 return n",
                           key);
    cr_expect(r && r->type == REDIS_REPLY_INTEGER && r->integer == 1, "the slow command: %s",
              r ? (r->str ? r->str : "another run") : cm_cluster_errstr(cc));
    freeReplyObject(r);
    cm_cluster_free(cc);
    expect_key(key, "1");
}

/* The bus retention of a worker's job on a cluster (best effort): with one
 * master frozen, the buses of the partitions on the other masters are
 * trimmed at once and the call says it failed; once the master answers
 * again, a later run leaves every bus trimmed. (The frozen master may run
 * the XTRIM it was sent when it wakes: that is the same trim.) */
Test(cluster, retention_in_best_effort_trims_the_answering_masters_buses)
{
    enum { NPART = 8 };
    cr_assert_eq(cm_partitions_set(NPART), 0);
    int master[NPART], on_frozen = 0;
    for (int p = 0; p < NPART; p++) {
        cm_key bus = cm_key_bus("rt.bus", p);
        master[p] = tf_cluster_master_of(&g_cl, slot_of(bus.s));
        on_frozen += master[p] == 0;
        /* one entry from 1970 (older than any retention), one from now */
        redisReply *r = cm_cluster_command(g_cc, slot_of(bus.s), "XADD %s 1000-0 type old", bus.s);
        cr_assert(r && r->type == REDIS_REPLY_STRING, "XADD %s: %s", bus.s, cm_cluster_errstr(g_cc));
        freeReplyObject(r);
        r = cm_cluster_command(g_cc, slot_of(bus.s), "XADD %s * type new", bus.s);
        cr_assert(r && r->type == REDIS_REPLY_STRING);
        freeReplyObject(r);
    }
    cr_assert(on_frozen > 0 && on_frozen < NPART, "partitions on master 0: %d of %d", on_frozen, NPART);
    es_store *s = es_store_open(g_cc, "rt.bus");
    cr_assert_not_null(s);
    pid_t pid = g_cl.node[0].server_pid;
    cm_cluster_skips_begin(g_cc);
    cm_cluster_set_best_effort(g_cc, 200);
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    long long t0 = tf_now_ms();
    long long n = es_retention_trim(s, 30);
    long long spent = tf_now_ms() - t0;
    cm_cluster_set_best_effort(g_cc, 0);
    long long len[NPART];   /* read while master 0 is still frozen */
    for (int p = 0; p < NPART; p++) {
        len[p] = -1;
        if (master[p] == 0)
            continue;
        cm_key bus = cm_key_bus("rt.bus", p);
        redisReply *r = cm_cluster_command(g_cc, slot_of(bus.s), "XLEN %s", bus.s);
        if (r && r->type == REDIS_REPLY_INTEGER)
            len[p] = r->integer;
        freeReplyObject(r);
    }
    kill(pid, SIGCONT);

    cr_expect_eq(n, ES_EREDIS, "a trim that skipped a master answered %lld", n);
    cr_expect_lt(spent, 2500, "took %lld ms (budget 200 ms, once for the frozen master)", spent);
    for (int p = 0; p < NPART; p++)
        cr_expect(master[p] == 0 || len[p] == 1, "partition %d (master %d): %lld entries during the freeze", p,
                  master[p], len[p]);
    /* it answers again: a run now leaves every bus with its new entry alone */
    cr_expect_geq(es_retention_trim(s, 30), 0, "%s", es_store_errstr(s));
    for (int p = 0; p < NPART; p++) {
        cm_key bus = cm_key_bus("rt.bus", p);
        redisReply *r = cm_cluster_command(g_cc, slot_of(bus.s), "XLEN %s", bus.s);
        cr_assert(r && r->type == REDIS_REPLY_INTEGER, "XLEN %s: %s", bus.s, cm_cluster_errstr(g_cc));
        cr_expect_eq(r->integer, 1, "partition %d: %lld entries after the thaw", p, r->integer);
        freeReplyObject(r);
    }
    es_store_free(s);
}

/* ---- single server: the same API, one node owning every slot ----------- */

TestSuite(single, .timeout = 120);

Test(single, plain_url_is_one_node_owning_every_slot)
{
    tf_redis rs;
    cr_assert_eq(tf_redis_start(&rs, NULL), 0);
    char err[512] = "";
    cm_cluster *cc = cm_cluster_open(rs.url, 5000, err, sizeof err);
    cr_assert_not_null(cc, "%s", err);
    cr_assert_not(cm_cluster_is_cluster(cc));
    cm_redis_url u;
    cr_assert_eq(cm_cluster_slot_addr(cc, 16383, &u), 0);
    cr_assert_eq(u.port, rs.port);
    int slots[4];
    cr_assert_eq(cm_cluster_master_slots(cc, slots, 4), 1);
    cr_assert_eq(slots[0], 0);

    redisReply *r = cm_cluster_command(cc, slot_of("a"), "SET a 1");
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    /* Keys in different slots may share a script on one server. */
    cm_script s = {.src = k_where_src};
    cm_argv a = {0};
    cm_argv_adds(&a, "{x}a");
    cm_argv_adds(&a, "{y}b");
    cm_argv_adds(&a, "z");
    r = cm_cluster_script(cc, &s, 2, &a);
    cr_assert(r && r->type == REDIS_REPLY_INTEGER && r->integer == rs.port);
    freeReplyObject(r);
    cm_argv_free(&a);

    cm_pipe *p = cm_pipe_new(cc);
    for (int i = 0; i < 50; i++)
        cm_pipe_command(p, CM_SLOT_ANY, "INCR n");
    cr_assert_eq(cm_pipe_exec(p), 0);
    for (int i = 0; i < 50; i++) {
        r = cm_pipe_take(p, (size_t)i);
        cr_assert(r && r->integer == i + 1);
        freeReplyObject(r);
    }
    cm_pipe_free(p);

    /* It never asked for a slot map (the server is not a cluster). */
    redisContext *c = tf_redis_connect(&rs);
    r = redisCommand(c, "INFO commandstats");
    cr_assert(r && r->type == REDIS_REPLY_STRING);
    cr_assert_null(strstr(r->str, "cmdstat_cluster"), "CLUSTER was sent to a single server");
    freeReplyObject(r);
    redisFree(c);
    cm_cluster_free(cc);
    tf_redis_stop(&rs);
}

Test(single, restarted_server_is_reconnected_within_the_deadline)
{
    tf_redis rs;
    cr_assert_eq(tf_redis_start(&rs, "appendonly yes\nappendfsync always\n"), 0);
    char err[512] = "";
    cm_cluster *cc = cm_cluster_open(rs.url, 2000, err, sizeof err);
    cr_assert_not_null(cc, "%s", err);
    redisReply *r = cm_cluster_command(cc, CM_SLOT_ANY, "SET k v");
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    cr_assert_eq(tf_redis_kill9(&rs), 0);
    cm_cluster_set_retry(cc, 0);
    r = cm_cluster_command(cc, CM_SLOT_ANY, "GET k");
    cr_assert_null(r, "a dead server answered");
    cr_assert_eq(cm_cluster_err(cc), CM_CLUSTER_EUNAVAIL);
    cr_assert(strstr(cm_cluster_errstr(cc), "127.0.0.1"), "%s", cm_cluster_errstr(cc));
    cr_assert_eq(tf_redis_restart(&rs), 0);
    cm_cluster_set_retry(cc, 10000);
    r = cm_cluster_command(cc, CM_SLOT_ANY, "GET k");
    cr_assert(r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "v"), "%s", cm_cluster_errstr(cc));
    freeReplyObject(r);
    cm_cluster_free(cc);
    tf_redis_stop(&rs);
}

Test(single, borrowed_connection_serves_calls_and_stays_the_callers)
{
    tf_redis rs;
    cr_assert_eq(tf_redis_start(&rs, NULL), 0);
    redisContext *c = tf_redis_connect(&rs);
    cm_cluster *cc = cm_cluster_borrow(c);
    cr_assert_not(cm_cluster_is_cluster(cc));
    cm_script s = {.src = k_where_src};
    cm_argv a = {0};
    cm_argv_adds(&a, "{x}a");
    cm_argv_adds(&a, "{y}b");
    cm_argv_adds(&a, "z");
    redisReply *r = cm_cluster_script(cc, &s, 2, &a);
    cr_assert(r && r->type == REDIS_REPLY_INTEGER && r->integer == rs.port, "%s", cm_cluster_errstr(cc));
    freeReplyObject(r);
    cm_argv_free(&a);
    cm_pipe *p = cm_pipe_new(cc);
    cm_pipe_command(p, slot_of("k1"), "SET k1 v1");
    cm_pipe_command(p, slot_of("k2"), "INCR k2");
    cr_assert_eq(cm_pipe_exec(p), 0);
    r = cm_pipe_take(p, 1);
    cr_assert(r && r->type == REDIS_REPLY_INTEGER && r->integer == 1);
    freeReplyObject(r);
    cm_pipe_free(p);
    cm_cluster_free(cc);
    /* Freeing the client left the caller's connection open. */
    r = redisCommand(c, "GET k1");
    cr_assert(r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "v1"));
    freeReplyObject(r);

    /* A broken borrowed connection fails at once, without reconnecting. */
    cc = cm_cluster_borrow(c);
    cr_assert_eq(tf_redis_kill9(&rs), 0);
    r = cm_cluster_command(cc, CM_SLOT_ANY, "GET k1");
    cr_assert_null(r, "a dead server answered");
    cr_assert_eq(cm_cluster_err(cc), CM_CLUSTER_EUNAVAIL);
    cr_assert_eq(tf_redis_restart(&rs), 0);
    r = cm_cluster_command(cc, CM_SLOT_ANY, "GET k1");
    cr_assert_null(r, "the borrowed connection was reopened");
    cm_cluster_free(cc);
    redisFree(c);
    tf_redis_stop(&rs);
}

Test(single, cluster_url_on_a_plain_server_is_refused_with_the_reason)
{
    tf_redis rs;
    cr_assert_eq(tf_redis_start(&rs, NULL), 0);
    char url[128], err[512] = "";
    snprintf(url, sizeof url, "redis-cluster://127.0.0.1:%d", rs.port);
    cm_cluster *cc = cm_cluster_open(url, 2000, err, sizeof err);
    cr_assert_null(cc);
    cr_assert(strstr(err, "cluster support disabled"), "%s", err);
    tf_redis_stop(&rs);
}

Test(single, acl_user_and_password_from_the_url_authenticate)
{
    tf_redis rs;
    cr_assert_eq(tf_redis_start(&rs, NULL), 0);
    /* Set after start: the fixture's readiness probe does not authenticate. */
    redisContext *c = tf_redis_connect(&rs);
    redisReply *x = redisCommand(c, "ACL SETUSER app on >apppw ~* &* +@all");
    cr_assert(x && x->type == REDIS_REPLY_STATUS);
    freeReplyObject(x);
    x = redisCommand(c, "CONFIG SET requirepass topsecret");
    cr_assert(x && x->type == REDIS_REPLY_STATUS);
    freeReplyObject(x);
    redisFree(c);
    char url[160], err[512] = "";
    /* The default user by password alone, then a named ACL user. */
    snprintf(url, sizeof url, "redis://:topsecret@127.0.0.1:%d", rs.port);
    cm_cluster *cc = cm_cluster_open(url, 2000, err, sizeof err);
    cr_assert_not_null(cc, "%s", err);
    redisReply *r = cm_cluster_command(cc, CM_SLOT_ANY, "ACL WHOAMI");
    cr_assert(r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "default"));
    freeReplyObject(r);
    cm_cluster_free(cc);

    snprintf(url, sizeof url, "redis://app:apppw@127.0.0.1:%d", rs.port);
    cc = cm_cluster_open(url, 2000, err, sizeof err);
    cr_assert_not_null(cc, "%s", err);
    r = cm_cluster_command(cc, CM_SLOT_ANY, "ACL WHOAMI");
    cr_assert(r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "app"));
    freeReplyObject(r);
    cm_cluster_free(cc);

    /* A wrong password fails open, naming the server, not the password. */
    snprintf(url, sizeof url, "redis://app:nope@127.0.0.1:%d", rs.port);
    cr_assert_null(cm_cluster_open(url, 2000, err, sizeof err));
    cr_assert(strstr(err, "127.0.0.1") && !strstr(err, "nope"), "%s", err);
    tf_redis_stop(&rs);
}

Test(cluster, mis_slotted_call_is_redirected_without_corrupting_the_map)
{
    /* "foo" lives on one master; the caller names a slot owned by another
     * (and, once, no slot at all). Redis' MOVED takes the call to foo's
     * master, and the map keeps the named slot where it is. */
    int foo_master = tf_cluster_master_of(&g_cl, slot_of("foo"));
    int wrong = -1;
    for (int s = 0; s < CM_CLUSTER_SLOTS && wrong < 0; s++)
        if (tf_cluster_master_of(&g_cl, s) != foo_master)
            wrong = s;
    int wrong_port = routed_port(wrong);
    redisReply *r = cm_cluster_command(g_cc, wrong, "SET foo bar");
    cr_assert(r && r->type == REDIS_REPLY_STATUS, "%s", r ? r->str : cm_cluster_errstr(g_cc));
    freeReplyObject(r);
    r = cm_cluster_command(g_cc, CM_SLOT_ANY, "GET foo");
    cr_assert(r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "bar"));
    freeReplyObject(r);
    cr_assert_eq(routed_port(wrong), wrong_port, "slot %d was re-pointed by foo's MOVED", wrong);
    char *got = raw_get(foo_master, "foo", false);
    cr_assert_str_eq(got, "bar");
    free(got);
}

/* Runs cmd on node i (raw, no redirection); asserts a status reply. */
static void raw_ok(int i, const char *what, redisReply *r)
{
    cr_assert(r && r->type == REDIS_REPLY_STATUS, "node %d: %s: %s", i, what, r && r->str ? r->str : "no reply");
    freeReplyObject(r);
}

struct finish_arg {
    int slot, dst;
    int rc;
};

/* Ends the migration 300 ms from now (another thread, while the client retries). */
static void *finish_later(void *ud)
{
    struct finish_arg *f = ud;
    tf_sleep_ms(300);
    f->rc = tf_cluster_migrate_slot(&g_cl, f->slot, f->dst, true);
    return NULL;
}

Test(cluster, tryagain_while_keys_are_split_is_retried_until_the_migration_ends)
{
    const char *a = "{split}a", *b = "{split}b";
    int slot = slot_of(a);
    set_key(a, "1");
    set_key(b, "2");
    int src = tf_cluster_master_of(&g_cl, slot), dst = -1;
    for (int i = 0; i < TF_CLUSTER_NODES && dst < 0; i++)
        if (i != src && tf_cluster_is_master(&g_cl, i))
            dst = i;
    /* Migrating, only {split}a moved: a two-key command cannot run anywhere. */
    redisContext *cs = tf_redis_connect(&g_cl.node[src]), *cd = tf_redis_connect(&g_cl.node[dst]);
    raw_ok(dst, "IMPORTING", redisCommand(cd, "CLUSTER SETSLOT %d IMPORTING %s", slot, g_cl.id[src]));
    raw_ok(src, "MIGRATING", redisCommand(cs, "CLUSTER SETSLOT %d MIGRATING %s", slot, g_cl.id[dst]));
    raw_ok(src, "MIGRATE",
           redisCommand(cs, "MIGRATE 127.0.0.1 %d %s 0 5000", g_cl.node[dst].port, a));
    redisReply *t = redisCommand(cs, "MGET %s %s", a, b);
    cr_assert(t && t->type == REDIS_REPLY_ERROR && !strncmp(t->str, "TRYAGAIN", 8), "src: %s",
              t && t->str ? t->str : "?");
    freeReplyObject(t);
    redisFree(cs);
    redisFree(cd);

    struct finish_arg f = {.slot = slot, .dst = dst, .rc = -1};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, finish_later, &f), 0);
    cm_cluster_set_retry(g_cc, 15000);
    redisReply *r = cm_cluster_command(g_cc, slot, "MGET %s %s", a, b);
    pthread_join(th, NULL);
    cr_assert_eq(f.rc, 0, "the migration did not finish");
    cr_assert_not_null(r, "%s", cm_cluster_errstr(g_cc));
    cr_assert(r->type == REDIS_REPLY_ARRAY && r->elements == 2, "MGET answered %s",
              r->type == REDIS_REPLY_ERROR ? r->str : "?");
    cr_assert_str_eq(r->element[0]->str, "1");
    cr_assert_str_eq(r->element[1]->str, "2");
    freeReplyObject(r);
    /* The MGET may have ended by ASK (between the last MIGRATE and SETSLOT
     * NODE) or MOVED; once the migration is over, the map follows. */
    expect_key(a, "1");
    cr_assert_eq(routed_port(slot), g_cl.node[dst].port);
    /* The client met TRYAGAIN (besides the check above) and waited it out. */
    redisContext *c = tf_redis_connect(&g_cl.node[src]);
    redisReply *st = redisCommand(c, "INFO errorstats");
    char v[64];
    cr_assert(st && st->type == REDIS_REPLY_STRING);
    tf_info_field(st->str, "errorstat_TRYAGAIN", v, sizeof v);
    cr_assert_geq(atoi(v + (strncmp(v, "count=", 6) ? 0 : 6)), 2, "TRYAGAIN count: %s", v);
    freeReplyObject(st);
    redisFree(c);
}
