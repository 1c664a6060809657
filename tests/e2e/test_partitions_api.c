/* test_partitions_api.c - the HTTP routes with PARTITIONS=4: a real
 * chorus-api and real workers on one redis-server, over real sockets.
 *
 *   streams_*        GET /api/event-store/streams lists every partition's
 *                    bus and the six dead-letter streams of each, kind and
 *                    length (checked against XLEN); the stream route pages a
 *                    partition's bus (name percent-encoded or not) and
 *                    refuses the unpartitioned name and a partition past the
 *                    last one.
 *   checkouts_*      checkouts posted through the API (with and without an
 *                    Idempotency-Key; the replay answers the same
 *                    checkout_id; the record and the history share the
 *                    partition) end SUCCEEDED on all four partitions; status,
 *                    replay, timeline (every saga group done), client
 *                    checkouts and saga stats answer as with one partition.
 *   workers_*        /api/workers: per group the four partitions (stream,
 *                    pending, lag) and totals that are their sums.
 *   dead_letters_*   dead letters parked on two partitions are listed, one is
 *                    retried into its own partition's redelivery stream, and
 *                    the bulk retry takes the oldest across partitions. */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/names.h"
#include "tests/e2e/api_env.h"
#include "tests/support/proc.h"

#define NPART 4
#define ADMIN "Content-Type: application/json\r\nAuthorization: Bearer " AE_TOKEN "\r\n"

static api_env E;
static pid_t g_workers[4];
static int g_nworkers;

static void setup(void)
{
    cr_assert_eq(cm_partitions_set(NPART), 0);
    const char *env[] = {"PARTITIONS=4", NULL};
    ae_setup(&E, NULL, AE_TOKEN, env);
    ae_product(&E, "p1", 1250, 1000);
}

static void teardown(void)
{
    for (int i = 0; i < g_nworkers; i++) {
        tf_kill(g_workers[i], SIGKILL);
        tf_wait_exit(g_workers[i], 5000, NULL);
    }
    g_nworkers = 0;
    ae_teardown(&E);
}

TestSuite(partitions_api, .init = setup, .fini = teardown, .timeout = 120);

/* Starts the three saga workers and the projection with PARTITIONS=4. */
static void spawn_workers(void)
{
    const char *bin = getenv("CHORUS_WORKER_BIN");
    cr_assert(bin && *bin, "CHORUS_WORKER_BIN is not set");
    const char *names[] = {"stock-reservation", "order-creation", "stock-compensation", "cqrs-projection"};
    char url[340];
    snprintf(url, sizeof url, "REDIS_URL=%s", E.r.url);
    const char *env[] = {url, "PARTITIONS=4", "METRICS_PORT=0", "BLOCK_MS=100", "CLAIM_IDLE_MS=1000",
                         "LOG_LEVEL=warn", NULL};
    for (int i = 0; i < 4; i++) {
        char log[400];
        snprintf(log, sizeof log, "%s/%s.log", E.r.dir, names[i]);
        const char *argv[] = {bin, names[i], NULL};
        g_workers[g_nworkers] = tf_spawn(argv, env, log);
        cr_assert_gt(g_workers[g_nworkers], 0);
        g_nworkers++;
    }
}

static json_t *get_json(const char *path, int want_status)
{
    tf_http_resp r;
    ae_req(&E, "GET", path, NULL, NULL, &r);
    cr_assert_eq(r.status, want_status, "GET %s: %d %s", path, r.status, r.body);
    json_t *j = ae_json(&r);
    tf_http_resp_free(&r);
    return j;
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static long long jint(json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

Test(partitions_api, streams_lists_and_pages_every_partitions_streams)
{
    char id[80];
    for (int i = 0; i < 8; i++)
        ae_checkout(&E, "client-s", "p1", 1, id);
    json_t *j = get_json("/api/event-store/streams", 200);
    json_t *ss = json_object_get(j, "streams");
    cr_assert_eq(json_array_size(ss), (size_t)NPART * (1 + CM_W_COUNT), "%zu streams", json_array_size(ss));
    long long bus_total = 0;
    int buses = 0, dlqs = 0;
    size_t i;
    json_t *s;
    json_array_foreach(ss, i, s) {
        const char *name = jstr(s, "stream"), *kind = jstr(s, "kind");
        cr_assert(name && kind);
        redisReply *x = ae_cmd(&E, "XLEN %s", name);
        cr_expect_eq(jint(s, "length"), x->integer, "length of %s", name);
        freeReplyObject(x);
        if (!strcmp(kind, "bus")) {
            char want[64];
            snprintf(want, sizeof want, AE_BUS ":{p%d}", buses++);
            cr_expect_str_eq(name, want);
            bus_total += jint(s, "length");
        } else {
            cr_expect_str_eq(kind, "dead_letters");
            cr_expect(strstr(name, ".dlq.choreo-"), "%s", name);
            dlqs++;
        }
    }
    cr_expect_eq(buses, NPART);
    cr_expect_eq(dlqs, NPART * CM_W_COUNT);
    cr_expect_eq(bus_total, 8, "the eight CheckoutInitiated, one bus entry each");
    json_decref(j);

    /* page a partition's bus: percent-encoded and as is */
    int p = cm_partition_of(id);
    char path[160];
    snprintf(path, sizeof path, "/api/event-store/streams/" AE_BUS "%%3A%%7Bp%d%%7D/events?count=100", p);
    j = get_json(path, 200);
    json_t *evs = json_object_get(j, "events"), *ev;
    bool seen = false;
    json_array_foreach(evs, i, ev) {
        json_t *pl = json_object_get(ev, "payload");
        const char *agg = jstr(pl ? pl : ev, "aggregate_id");
        if (!agg)
            agg = jstr(ev, "aggregate_id");
        cr_expect(agg && cm_partition_of(agg) == p, "an event of %s on the bus of partition %d", agg, p);
        seen = seen || (agg && !strcmp(agg, id));
    }
    cr_expect(seen, "checkout %s is on the bus of its partition %d", id, p);
    json_decref(j);
    snprintf(path, sizeof path, "/api/event-store/streams/" AE_BUS ":{p%d}/events", p);
    json_decref(get_json(path, 200));

    tf_http_resp r;
    ae_req(&E, "GET", "/api/event-store/streams/" AE_BUS "/events", NULL, NULL, &r);
    ae_assert_error(&r, 404, "unknown_stream");
    tf_http_resp_free(&r);
    ae_req(&E, "GET", "/api/event-store/streams/" AE_BUS "%3A%7Bp4%7D/events", NULL, NULL, &r);
    ae_assert_error(&r, 404, "unknown_stream");
    tf_http_resp_free(&r);
}

/* True when every checkout of the list reads SUCCEEDED. */
typedef struct ids {
    char (*v)[80];
    int n;
} ids;
static bool all_succeeded(void *ud)
{
    ids *s = ud;
    for (int i = 0; i < s->n; i++) {
        char path[160];
        snprintf(path, sizeof path, "/api/checkouts/%s", s->v[i]);
        tf_http_resp r;
        ae_req(&E, "GET", path, NULL, NULL, &r);
        bool ok = r.status == 200 && strstr(r.body, "\"SUCCEEDED\"");
        tf_http_resp_free(&r);
        if (!ok)
            return false;
    }
    return true;
}

/* True when /api/workers shows the four groups with nothing pending and no
 * lag in total (every partition read to its end and acknowledged). */
static bool groups_idle(void *ud)
{
    (void)ud;
    tf_http_resp r;
    ae_req(&E, "GET", "/api/workers", NULL, NULL, &r);
    json_t *j = r.status == 200 ? json_loads(r.body, 0, NULL) : NULL;
    tf_http_resp_free(&r);
    json_t *gs = json_object_get(j, "groups"), *g;
    size_t i;
    bool idle = json_array_size(gs) == 4;
    json_array_foreach(gs, i, g) {
        idle = idle && json_is_integer(json_object_get(g, "lag")) && jint(g, "lag") == 0 && jint(g, "pending") == 0;
    }
    json_decref(j);
    return idle;
}

Test(partitions_api, checkouts_end_and_every_route_answers)
{
    spawn_workers();
    enum { N = 16 };
    static char co[N][80];
    int per[NPART] = {0};
    for (int i = 0; i < N; i++) {
        char body[160], key[32];
        snprintf(body, sizeof body, "{\"client_id\":\"client-%d\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}",
                 i % 3);
        snprintf(key, sizeof key, "key-%d", i);
        tf_http_resp r;
        ae_post_checkout(&E, body, i % 2 ? key : NULL, &r);
        cr_assert_eq(r.status, 202, "%s", r.body);
        json_t *j = ae_json(&r);
        snprintf(co[i], sizeof co[i], "%s", jstr(j, "checkout_id"));
        json_decref(j);
        tf_http_resp_free(&r);
        per[cm_partition_of(co[i])]++;
        if (i % 2) {
            /* the same key again: the same checkout, from the record in its partition */
            ae_post_checkout(&E, body, key, &r);
            cr_assert_eq(r.status, 202, "%s", r.body);
            j = ae_json(&r);
            cr_expect_str_eq(jstr(j, "checkout_id"), co[i], "replay of key %s", key);
            json_decref(j);
            tf_http_resp_free(&r);
            char client[16];
            snprintf(client, sizeof client, "client-%d", i % 3);
            cr_expect_eq(cm_partition_of(co[i]), cm_partition_of_idem(client, key), "id drawn in the key's partition");
            cr_expect_eq(ae_int(&E, "EXISTS %s", cm_key_idem(client, key).s), 1, "record %s", cm_key_idem(client, key).s);
        }
    }
    int used = 0;
    for (int p = 0; p < NPART; p++)
        used += per[p] > 0;
    cr_expect_gt(used, 1, "checkouts spread over partitions");
    ids s = {co, N};
    cr_assert(tf_wait_until(all_succeeded, &s, 30000), "checkouts did not all succeed");
    cr_assert(tf_wait_until(groups_idle, NULL, 30000), "the groups' totals did not reach 0 pending, 0 lag");
    for (int i = 0; i < N; i++) {
        char path[200];
        snprintf(path, sizeof path, "/api/event-store/replay/checkout/%.79s", co[i]);
        json_t *j = get_json(path, 200);
        cr_expect_eq(json_array_size(json_object_get(j, "events")), 4);
        json_decref(j);
        snprintf(path, sizeof path, "/api/checkouts/%.79s/timeline", co[i]);
        j = get_json(path, 200);
        json_t *evs = json_object_get(j, "events"), *ev;
        size_t k;
        cr_expect_eq(json_array_size(evs), 4);
        json_array_foreach(evs, k, ev) {
            json_t *gs = json_object_get(ev, "groups"), *g;
            size_t m;
            json_array_foreach(gs, m, g) {
                const char *name = jstr(g, "group");
                if (!strcmp(name, "choreo-reservation") || !strcmp(name, "choreo-order") ||
                    !strcmp(name, "choreo-compensation") || !strcmp(name, "choreo-cqrs"))
                    cr_expect_str_eq(jstr(g, "state"), "done", "%s of %s in %s", jstr(ev, "type"), co[i], name);
            }
        }
        json_decref(j);
    }
    json_t *j = get_json("/api/clients/client-0/checkouts?count=100", 200);
    cr_expect_eq(json_array_size(json_object_get(j, "checkouts")), 6, "client-0 posted 6 of the 16");
    /* merged newest first over the partitions' indexes (posted one after another) */
    for (int k = 0; k < 6 && k < (int)json_array_size(json_object_get(j, "checkouts")); k++)
        cr_expect_str_eq(jstr(json_array_get(json_object_get(j, "checkouts"), (size_t)k), "checkout_id"),
                         co[15 - 3 * k], "position %d of client-0's checkouts", k);
    json_decref(j);
    /* the client's orders, counted per partition, summed */
    j = get_json("/api/event-store/cqrs/orders-by-client/client-0", 200);
    cr_expect_eq(jint(j, "total_orders"), 6, "client-0's orders summed over the partitions");
    const char *last = jstr(j, "last_checkout_id");
    bool known = false;
    for (int k = 0; k < N && last; k += 3)
        known |= !strcmp(last, co[k]);
    cr_expect(known, "last_checkout_id %s is not one of client-0's", last ? last : "(none)");
    json_decref(j);
    j = get_json("/api/stats/sagas?window_s=600", 200);
    cr_expect_eq(jint(j, "started"), N);
    cr_expect_eq(jint(j, "succeeded"), N);
    json_decref(j);
    j = get_json("/api/products/p1", 200);
    cr_expect_eq(jint(j, "sold"), N);
    json_decref(j);
}

Test(partitions_api, workers_show_each_partition_and_totals)
{
    char id[80];
    for (int i = 0; i < 12; i++)
        ae_checkout(&E, "client-w", "p1", 1, id);
    /* a group created by hand on every partition, nothing read yet */
    for (int p = 0; p < NPART; p++)
        freeReplyObject(ae_cmd(&E, "XGROUP CREATE %s choreo-audit 0 MKSTREAM", cm_key_bus(AE_BUS, p).s));
    json_t *j = get_json("/api/workers", 200);
    json_t *gs = json_object_get(j, "groups");
    cr_assert_eq(json_array_size(gs), 1, "%zu groups", json_array_size(gs));
    json_t *g = json_array_get(gs, 0);
    cr_expect_str_eq(jstr(g, "group"), "choreo-audit");
    json_t *ps = json_object_get(g, "partitions"), *x;
    cr_assert_eq(json_array_size(ps), NPART);
    long long lag = 0;
    size_t i;
    json_array_foreach(ps, i, x) {
        cr_expect_eq(jint(x, "partition"), (long long)i);
        cr_expect_str_eq(jstr(x, "stream"), cm_key_bus(AE_BUS, (int)i).s);
        redisReply *n = ae_cmd(&E, "XLEN %s", cm_key_bus(AE_BUS, (int)i).s);
        cr_expect_eq(jint(x, "lag"), n->integer, "lag of partition %zu", i);
        freeReplyObject(n);
        lag += jint(x, "lag");
        cr_expect_eq(jint(x, "pending"), 0);
    }
    cr_expect_eq(jint(g, "lag"), 12, "total lag");
    cr_expect_eq(lag, 12);
    cr_expect_eq(jint(g, "pending"), 0);
    json_decref(j);
    /* deliver two entries of one partition: pending shows there and in the
     * total (a partition holding two or more: 12 checkouts over 4 partitions
     * always leave one, the last checkout's may hold only itself) */
    int p = -1;
    for (int q = 0; q < NPART && p < 0; q++) {
        redisReply *n = ae_cmd(&E, "XLEN %s", cm_key_bus(AE_BUS, q).s);
        if (n->integer >= 2)
            p = q;
        freeReplyObject(n);
    }
    cr_assert_geq(p, 0, "no partition holds two entries");
    freeReplyObject(ae_cmd(&E, "XREADGROUP GROUP choreo-audit c1 COUNT 2 STREAMS %s >", cm_key_bus(AE_BUS, p).s));
    j = get_json("/api/workers", 200);
    g = json_array_get(json_object_get(j, "groups"), 0);
    cr_expect_eq(jint(g, "pending"), 2);
    cr_expect_eq(jint(g, "lag"), 10);
    cr_expect_eq(jint(g, "consumers"), 1);
    cr_expect_eq(jint(json_array_get(json_object_get(g, "partitions"), (size_t)p), "pending"), 2);
    cr_expect_str_eq(jstr(g, "last_delivered_id"),
                     jstr(json_array_get(json_object_get(g, "partitions"), (size_t)p), "last_delivered_id"));
    json_decref(j);
}

Test(partitions_api, dead_letters_of_every_partition_are_listed_and_retried_in_place)
{
    /* parked by hand as the runner parks: ids 5-0 on partition 1, 3-0 and 7-0 on 2 */
    const char *dlq1 = AE_BUS ":{p1}.dlq.choreo-order", *dlq2 = AE_BUS ":{p2}.dlq.choreo-order";
    freeReplyObject(ae_cmd(&E, "XADD %s 5-0 group choreo-order reason r1 attempts 1 stream x entry_id 1-0 type X "
                               "payload x ts 1", dlq1));
    freeReplyObject(ae_cmd(&E, "XADD %s 3-0 group choreo-order reason r2 attempts 1 stream x entry_id 1-0 type X "
                               "payload x ts 1", dlq2));
    freeReplyObject(ae_cmd(&E, "XADD %s 7-0 group choreo-order reason r3 attempts 1 stream x entry_id 2-0 type X "
                               "payload x ts 1", dlq2));
    json_t *j = get_json("/api/dead-letters", 200);
    cr_expect_eq(json_array_size(json_object_get(j, "dead_letters")), 3);
    json_decref(j);
    tf_http_resp r;
    ae_req(&E, "POST", "/api/dead-letters/5-0/retry", ADMIN, NULL, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    tf_http_resp_free(&r);
    cr_expect_eq(ae_int(&E, "XLEN %s", dlq1), 0);
    cr_expect_eq(ae_int(&E, "XLEN " AE_BUS ":{p1}.retry.choreo-order"), 1, "re-delivered on its own partition");
    cr_expect_eq(ae_int(&E, "EXISTS " AE_BUS ".retry.choreo-order"), 0);
    /* bulk: the oldest one across partitions is 3-0 (partition 2) */
    ae_req(&E, "POST", "/api/dead-letters/retry", ADMIN, "{\"group\":\"choreo-order\",\"count\":1}", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_expect_str_eq(r.body, "{\"retried\":1}");
    tf_http_resp_free(&r);
    redisReply *left = ae_cmd(&E, "XRANGE %s - +", dlq2);
    cr_assert_eq(left->elements, 1);
    cr_expect_str_eq(left->element[0]->element[0]->str, "7-0", "the newer one stays");
    freeReplyObject(left);
    cr_expect_eq(ae_int(&E, "XLEN " AE_BUS ":{p2}.retry.choreo-order"), 1);
}
