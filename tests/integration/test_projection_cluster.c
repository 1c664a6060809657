/* test_projection_cluster.c - the projection through a real Redis Cluster
 * (tests/support/cluster_fixture.h: 3 masters + 3 replicas on loopback,
 * one for the suite's one test): with PARTITIONS=4, batches mixing
 * partitions go out as one apply script per partition, each to its slot's
 * master, and write exactly the bytes they write on a single server (every
 * read-model key compared by DUMP); a redelivery changes nothing; the
 * summed and merged views (projections/read.h) read through the cluster
 * equal the single server's; chorus-projection-rebuild pointed at the
 * cluster (CHORUS_REBUILD_BIN) reproduces them byte for byte; and with
 * PARTITIONS=1, whose keys span slots, the call is refused before anything
 * is sent. A projection that built a
 * cross-slot script call would fail here. */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/cluster.h"
#include "common/names.h"
#include "common/redis.h"
#include "projections/projection.h"
#include "projections/read.h"
#include "tests/integration/saga_events.h"
#include "tests/support/cluster_fixture.h"
#include "tests/support/proc.h"
#include "tests/support/redis_fixture.h"

#define NPART 4

static int slot_of(const cm_key *k)
{
    return cm_key_slot(k->s, strlen(k->s));
}

TestSuite(projection_cluster, .timeout = 120);

/* DUMP of key through the cluster client; NULL when the key does not exist
 * (caller frees). *len gets its length. */
static char *cluster_dump(cm_cluster *cc, const char *key, size_t *len)
{
    redisReply *r = cm_cluster_command(cc, cm_key_slot(key, strlen(key)), "DUMP %s", key);
    cr_assert(r && r->type != REDIS_REPLY_ERROR, "DUMP %s: %s", key, r ? r->str : cm_cluster_errstr(cc));
    char *out = NULL;
    if (r->type == REDIS_REPLY_STRING) {
        out = malloc(r->len);
        memcpy(out, r->str, r->len);
        *len = r->len;
    }
    freeReplyObject(r);
    return out;
}

/* Asserts the cluster holds exactly the read models of ref (the single
 * server's), byte for byte. */
static void assert_same_models(const tf_cluster *cl, cm_cluster *cc, const sx_dump *ref)
{
    for (size_t i = 0; i < ref->n; i++) {
        size_t len = 0;
        char *v = cluster_dump(cc, ref->keys[i], &len);
        cr_assert_not_null(v, "%s is missing on the cluster", ref->keys[i]);
        cr_assert(len == ref->lens[i] && !memcmp(v, ref->vals[i], len), "%s differs on the cluster", ref->keys[i]);
        free(v);
    }
    size_t on_nodes = 0;
    for (int i = 0; i < TF_CLUSTER_NODES; i++) {
        if (!tf_cluster_is_master(cl, i))
            continue;
        redisContext *nc = tf_redis_connect(&cl->node[i]);
        sx_dump d;
        sx_dump_take(nc, CM_KEY_RM_PREFIX "*", &d);
        on_nodes += d.n;
        sx_dump_free(&d);
        redisFree(nc);
    }
    cr_assert_eq(on_nodes, ref->n, "the cluster holds read models the single server does not");
}

/* Copies every partition's bus from the single server c to the cluster
 * (same entry ids and fields), as if the workers had appended there. */
static void copy_buses(redisContext *c, cm_cluster *cc)
{
    for (int p = 0; p < NPART; p++) {
        cm_key bus = cm_key_bus(CM_BUS_STREAM_DEFAULT, p);
        redisReply *r = redisCommand(c, "XRANGE %s - +", bus.s);
        cr_assert(r && r->type == REDIS_REPLY_ARRAY);
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *e = r->element[i], *f = e->element[1];
            cm_argv a = {0};
            cm_argv_adds(&a, "XADD");
            cm_argv_adds(&a, bus.s);
            cm_argv_add(&a, e->element[0]->str, e->element[0]->len);
            for (size_t j = 0; j < f->elements; j++)
                cm_argv_add(&a, f->element[j]->str, f->element[j]->len);
            redisReply *x = cm_cluster_argv(cc, slot_of(&bus), &a);
            cr_assert(x && x->type == REDIS_REPLY_STRING, "XADD %s: %s", bus.s, x ? x->str : cm_cluster_errstr(cc));
            freeReplyObject(x);
            cm_argv_free(&a);
        }
        freeReplyObject(r);
    }
}

/* Runs chorus-projection-rebuild on url with PARTITIONS=4; returns its exit code. */
static int run_rebuild(const char *url, const char *logdir)
{
    const char *bin = getenv("CHORUS_REBUILD_BIN");
    cr_assert(bin && *bin, "CHORUS_REBUILD_BIN is not set (run through meson test)");
    char u[400], log[400];
    snprintf(u, sizeof u, "REDIS_URL=%s", url);
    snprintf(log, sizeof log, "%s/rebuild.log", logdir);
    const char *argv[] = {bin, NULL};
    const char *env[] = {u, "PARTITIONS=4", "READ_MODEL_TTL_S=0", "LOG_LEVEL=warn", NULL};
    pid_t pid = tf_spawn(argv, env, log);
    cr_assert_gt(pid, 0);
    int st = 0;
    cr_assert_eq(tf_wait_exit(pid, 60000, &st), 0, "the rebuild did not finish");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        tf_dump_file(log, "rebuild");
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Applies evs[0..n) through cc in batches of 5 (each mixing partitions). */
static pj_apply_res apply_through(pj_projection *p, cm_cluster *cc, es_event **evs, size_t n)
{
    pj_apply_res total = {0};
    for (size_t i = 0; i < n; i += 5) {
        pj_apply_res res;
        char err[256];
        int rc = pj_projection_apply(p, cc, CM_BUS_STREAM_DEFAULT, evs + i, n - i < 5 ? n - i : 5, PJ_LIVE, NULL,
                                     &res, err, sizeof err);
        cr_assert_eq(rc, PJ_OK, "apply: %s", err);
        total.applied += res.applied;
        total.duplicates += res.duplicates;
    }
    return total;
}

Test(projection_cluster, projection_on_a_cluster_writes_the_bytes_of_one_server_and_never_spans_slots)
{
    cr_assert_eq(cm_partitions_set(NPART), 0);
    tf_cluster cl;
    cr_assert_eq(tf_cluster_start(&cl, NULL), 0, "cannot start the cluster");
    char err[256];
    cm_cluster *cc = cm_cluster_open(cl.url, 2000, err, sizeof err);
    cr_assert_not_null(cc, "%s", err);
    /* the partitions live on more than one master: the pipeline really splits */
    int masters[NPART], distinct = 0;
    for (int p = 0; p < NPART; p++) {
        cm_key bus = cm_key_bus(CM_BUS_STREAM_DEFAULT, p);
        masters[p] = tf_cluster_master_of(&cl, slot_of(&bus));
        bool seen = false;
        for (int q = 0; q < p; q++)
            seen |= masters[q] == masters[p];
        distinct += !seen;
    }
    cr_assert_geq(distinct, 2, "every partition on one master");

    /* the events: sagas appended to a single server's store (as the workers would) */
    tf_redis R;
    cr_assert_eq(tf_redis_start(&R, NULL), 0);
    redisContext *C = tf_redis_connect(&R);
    cm_cluster *CC = cm_cluster_borrow(C);
    es_store *store = es_store_new(C, CM_BUS_STREAM_DEFAULT, err, sizeof err);
    cr_assert_not_null(store, "%s", err);
    static const enum sx_shape shapes[] = {SX_SUCCESS, SX_NO_STOCK, SX_ORDER_LIMIT, SX_TIMEOUT};
    es_event **evs = NULL;
    size_t n = 0;
    for (int i = 0; i < 16; i++) {
        char id[16], client[8], product[8];
        snprintf(id, sizeof id, "co-%02d", i);
        snprintf(client, sizeof client, "c%d", i % 3);
        snprintf(product, sizeof product, "p%d", i % 2);
        sx_saga(store, shapes[i % 4], id, client, product, 1 + i % 3);
        size_t m;
        es_event **h = sx_history(store, id, &m);
        evs = realloc(evs, (n + m) * sizeof *evs);
        memcpy(evs + n, h, m * sizeof *h);
        n += m;
        free(h);
    }

    pj_projection *on_cluster = pj_projection_new(), *on_server = pj_projection_new();
    pj_apply_res rc = apply_through(on_cluster, cc, evs, n);
    cr_assert_eq(rc.applied, n);
    rc = apply_through(on_cluster, cc, evs, n);
    cr_assert_eq(rc.applied, 0, "a redelivery changes nothing");
    cr_assert_eq(rc.duplicates, n);
    cr_assert_eq(apply_through(on_server, CC, evs, n).applied, n);

    /* every read model on the one server, byte for byte on the cluster, and
     * no other read model there */
    sx_dump ref;
    sx_dump_take(C, CM_KEY_RM_PREFIX "*", &ref);
    cr_assert_gt(ref.n, 16 + NPART);
    assert_same_models(&cl, cc, &ref);

    /* the read side through the cluster gives the single server's views */
    for (int k = 0; k < 2; k++) {
        char pid[8];
        snprintf(pid, sizeof pid, "p%d", k);
        pj_stock_view a, b;
        cr_assert_eq(pj_read_stock(cc, pid, &a, err, sizeof err), PJ_OK, "%s", err);
        cr_assert_eq(pj_read_stock(CC, pid, &b, err, sizeof err), PJ_OK, "%s", err);
        cr_assert(a.found && a.reserved == b.reserved && a.sold == b.sold && a.released == b.released, "%s", pid);
    }
    pj_client_view a, b;
    cr_assert_eq(pj_read_client(cc, "c0", &a, err, sizeof err), PJ_OK, "%s", err);
    cr_assert_eq(pj_read_client(CC, "c0", &b, err, sizeof err), PJ_OK, "%s", err);
    cr_assert(a.found && a.total_orders == b.total_orders && a.total_orders > 0);
    cr_assert_str_eq(a.last_checkout_id, b.last_checkout_id);
    char cpa[48], cpb[48];
    cr_assert_eq(pj_read_checkpoint(cc, cpa, err, sizeof err), PJ_OK, "%s", err);
    cr_assert_eq(pj_read_checkpoint(CC, cpb, err, sizeof err), PJ_OK, "%s", err);
    cr_assert(cpa[0]);
    cr_assert_str_eq(cpa, cpb);

    /* PARTITIONS=1: the batch's keys span slots, and nothing is sent */
    cr_assert_eq(cm_partitions_set(1), 0);
    pj_projection *flat = pj_projection_new();
    pj_apply_res res;
    cr_assert_eq(pj_projection_apply(flat, cc, CM_BUS_STREAM_DEFAULT, evs, 4, PJ_LIVE, NULL, &res, err, sizeof err),
                 PJ_EREDIS, "a cross-slot apply went through");
    cr_assert(strstr(err, "span"), "%s", err);
    pj_projection_free(flat);
    cr_assert_eq(cm_partitions_set(NPART), 0);

    /* chorus-projection-rebuild on the cluster (redis-cluster:// URL): every
     * master's read models deleted, each partition's bus replayed on its
     * master, the same bytes again */
    copy_buses(C, cc);
    cm_key stray = cm_key_rm_checkout("stray");
    redisReply *h = cm_cluster_command(cc, slot_of(&stray), "HSET %s status PENDING", stray.s);
    cr_assert(h && h->type == REDIS_REPLY_INTEGER);
    freeReplyObject(h);
    cr_assert_eq(run_rebuild(cl.url, R.dir), 0, "chorus-projection-rebuild failed on the cluster");
    assert_same_models(&cl, cc, &ref);
    for (int p = 0; p < NPART; p++) {
        cm_key lock = cm_key_pj_rebuild(p);
        redisReply *e = cm_cluster_command(cc, slot_of(&lock), "EXISTS %s", lock.s);
        cr_assert(e && e->type == REDIS_REPLY_INTEGER && e->integer == 0, "the rebuild kept %s", lock.s);
        freeReplyObject(e);
    }

    pj_projection_free(on_cluster);
    pj_projection_free(on_server);
    es_events_free(evs, n);
    sx_dump_free(&ref);
    es_store_free(store);
    cm_cluster_free(cc);
    cm_cluster_free(CC);
    redisFree(C);
    tf_redis_stop(&R);
    tf_cluster_stop(&cl);
}
