/* test_crash_recovery.c - crash recovery in seconds: a saga worker SIGKILLed
 * while it holds pending entries, restarted under the same consumer name
 * (as `./chorus up` and compose do: CONSUMER_NAME), continues the sagas it
 * held at once, not after CLAIM_IDLE_MS (left at 30 s here, so a takeover
 * cannot explain it). Real `chorus-worker` processes, a private redis-server.
 *
 * CHORUS_WORKER_BIN (meson env) names the chorus-worker binary. */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/names.h"
#include "common/redis.h"
#include "event_store/event.h"
#include "tests/e2e/saga_env.h"
#include "tests/support/proc.h"

static sg_env E;

static void setup(void)
{
    sg_setup(&E, NULL);
}

static void teardown(void)
{
    sg_teardown(&E);
}

TestSuite(crash_recovery, .init = setup, .fini = teardown, .timeout = 120);

enum { N = 100, STOCK = 100000 };

static char *g_ids[N];

typedef struct progress {
    const char *consumer;
    const char *group;
} progress;

/* True once the consumer holds entries and some sagas already ended. */
static bool holding_mid_burst(void *ud)
{
    const progress *p = ud;
    redisReply *r = redisCommand(E.c, "XPENDING %s %s - + 1000 %s", es_store_bus(E.s), p->group, p->consumer);
    cr_assert_not_null(r, "redis: %s", E.c->errstr);
    size_t held = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;   /* NOGROUP until the worker made it */
    freeReplyObject(r);
    return held >= 3 && sg_count_terminal(&E, g_ids, N) >= 5;
}

/* The checkout ids of the entries consumer holds in group (caller frees
 * each and the array). */
static char **held_checkouts(const char *group, const char *consumer, size_t *n)
{
    const char *bus = es_store_bus(E.s);
    redisReply *r = redisCommand(E.c, "XPENDING %s %s - + 1000 %s", bus, group, consumer);
    cr_assert(r && r->type == REDIS_REPLY_ARRAY);
    char **ids = calloc(r->elements ? r->elements : 1, sizeof *ids);
    *n = 0;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = redisCommand(E.c, "XRANGE %s %s %s", bus, r->element[i]->element[0]->str,
                                     r->element[i]->element[0]->str);
        cr_assert(e && e->type == REDIS_REPLY_ARRAY && e->elements == 1);
        es_event *ev = NULL;
        char err[256];
        cr_assert_eq(es_event_from_entry(e->element[0], &ev, err, sizeof err), 0, "%s", err);
        ids[(*n)++] = strdup(ev->aggregate_id);
        es_event_free(ev);
        freeReplyObject(e);
    }
    freeReplyObject(r);
    return ids;
}

Test(crash_recovery, saga_worker_killed_holding_entries_resumes_them_within_the_restart_delay)
{
    enum { D_MS = 2000 };
    sg_product(&E, "p1", STOCK);
    const char *idle = "CLAIM_IDLE_MS=30000";
    sg_spawn(&E, "stock-reservation", (const char *const[]){"CONSUMER_NAME=stock-reservation-1", idle, NULL});
    int order = sg_spawn(&E, "order-creation", (const char *const[]){"CONSUMER_NAME=order-creation-1", idle,
                                                                     "FAULT_ORDER_DELAY_MS=30", NULL});
    sg_spawn(&E, "stock-compensation", (const char *const[]){"CONSUMER_NAME=stock-compensation-1", idle, NULL});
    sg_line line[] = {{"p1", 1, 100}};
    for (int i = 0; i < N; i++) {
        g_ids[i] = malloc(32);
        snprintf(g_ids[i], 32, "co-crash-%d", i);
        sg_checkout(&E, g_ids[i], "client-1", line, 1);
    }
    progress p = {"order-creation-1", cm_group_names[CM_W_ORDER_CREATION]};
    bool mid = tf_wait_until(holding_mid_burst, &p, 20000);
    if (!mid)
        sg_dump_logs(&E);
    cr_assert(mid, "order-creation never held entries mid-burst");
    sg_kill9(&E, order);

    size_t nheld = 0;
    char **held = held_checkouts(p.group, p.consumer, &nheld);
    size_t open = nheld - sg_count_terminal(&E, held, nheld);
    cr_log_info("SIGKILLed order-creation holding %zu entries, %zu of their sagas still open; restart in %d ms",
                nheld, open, D_MS);
    cr_assert_gt(open, 0, "the sagas held by the killed worker had all ended: nothing to show");

    tf_sleep_ms(D_MS);   /* the supervisor's restart delay */
    /* the restarted copy runs at full speed: the held sagas are what is timed */
    for (int k = 0; k < E.p[order].nenv; k++)
        if (!strncmp(E.p[order].env[k], "FAULT_ORDER_DELAY_MS=", 21))
            snprintf(E.p[order].env[k], sizeof E.p[order].env[k], "FAULT_ORDER_DELAY_MS=0");
    long long t0 = tf_now_ms();
    sg_restart(&E, order);
    bool ended = sg_wait_terminal(&E, held, nheld, D_MS + 1000);
    long long took = tf_now_ms() - t0;
    if (!ended)
        sg_dump_logs(&E);
    cr_log_info("every held saga ended %lld ms after the restart (bound %d ms; CLAIM_IDLE_MS 30000)", took,
                D_MS + 1000);
    cr_assert(ended, "held sagas still open %lld ms after the restart", took);

    cr_assert(sg_wait_terminal(&E, g_ids, N, 30000), "not every saga ended");
    cr_assert(sg_wait_quiet(&E, 30000), "the groups did not settle");
    long long avail, reserved, sold;
    sg_stock(&E, "p1", &avail, &reserved, &sold);
    cr_assert_eq(avail + reserved + sold, STOCK, "stock not conserved");
    cr_assert_eq(reserved, 0);
    cr_assert_eq(sold, N);
    for (size_t i = 0; i < nheld; i++)
        free(held[i]);
    free(held);
    for (int i = 0; i < N; i++)
        free(g_ids[i]);
}
