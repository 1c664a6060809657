/* test_retry_policy.c - the worker runtime's retry policy (workers/reclaim.c),
 * pure code: the backoff schedule, the time budget derived from a delivery
 * count and an entry id, and which failure reasons mean "Redis is
 * unavailable" (retried without a budget). */
#include "common/clock.h"
#include "workers/runner_int.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

static wk_ctx policy(int64_t base, int64_t cap, int64_t budget)
{
    wk_ctx c;
    memset(&c, 0, sizeof c);
    c.set.retry_base_ms = base;
    c.set.retry_max_ms = cap;
    c.set.retry_budget_ms = budget;
    return c;
}

/* An entry id written ago_ms milliseconds ago. */
static const char *id_aged(char *buf, size_t len, int64_t ago_ms)
{
    snprintf(buf, len, "%lld-3", (long long)(cm_wall_ms() - ago_ms));
    return buf;
}

Test(retry_policy, backoff_doubles_from_base_up_to_the_cap_with_jitter_in_half_to_full)
{
    wk_ctx c = policy(100, 1000, 0);
    int64_t nominal[] = {0, 0, 100, 200, 400, 800, 1000, 1000, 1000};
    for (long long d = 2; d <= 8; d++)
        for (int k = 0; k < 50; k++) {
            char id[32];
            snprintf(id, sizeof id, "17000000%02d-%d", k, k);
            int64_t b = wk_backoff_ms(&c, id, d);
            cr_assert(b >= nominal[d] / 2 && b <= nominal[d], "delivery %lld: %lld ms, nominal %lld", d,
                      (long long)b, (long long)nominal[d]);
            cr_assert_eq(b, wk_backoff_ms(&c, id, d), "the jitter must be the same in every process");
        }
}

Test(retry_policy, budget_spent_exactly_when_the_waits_reach_it_and_the_entry_is_old_enough)
{
    wk_ctx c = policy(100, 1000, 5000);
    char id[48];
    id_aged(id, sizeof id, 60000);
    long long first = 0;
    int64_t waited = 0;
    for (long long d = 1; d < 100 && !first; d++) {
        if (d >= 2)
            waited += wk_backoff_ms(&c, id, d);
        if (wk_budget_spent(&c, id, d))
            first = d;
        else
            cr_assert_lt(waited, 5000, "not spent after %lld ms of waits", (long long)waited);
    }
    cr_assert_gt(first, 5, "spent after %lld deliveries", first);
    cr_assert_geq(waited, 5000, "spent after only %lld ms of waits", (long long)waited);
    /* the same count on an entry written just now: the clock says no */
    char young[48];
    id_aged(young, sizeof young, 1000);
    cr_assert(!wk_budget_spent(&c, young, first + 50));
}

Test(retry_policy, zero_budget_is_never_spent)
{
    wk_ctx c = policy(1, 1, 0);
    char id[48];
    cr_assert(!wk_budget_spent(&c, id_aged(id, sizeof id, 86400000), 1000000));
}

Test(retry_policy, huge_delivery_counts_are_cheap_and_count_at_least_half_the_cap_each)
{
    wk_ctx c = policy(1, 10, 3600000);
    char id[48];
    id_aged(id, sizeof id, 7200000);
    cr_assert(!wk_budget_spent(&c, id, 1000));             /* about 5..10 s of waits */
    cr_assert(wk_budget_spent(&c, id, 800000));            /* >= 4000 s of waits */
}

Test(retry_policy, redis_unavailability_is_told_apart_from_other_failures)
{
    static const char *const yes[] = {
        "redis: LOADING Redis is loading the dataset in memory",
        "step script: redis: BUSY Redis is busy running a script",
        "read-model update failed: redis: MASTERDOWN Link with MASTER is down",
        "append: redis: READONLY You can't write against a read only replica.",
        "redis: OOM command not allowed when used memory > 'maxmemory'.",
        "redis: CLUSTERDOWN The cluster is down",
        "history read: redis: Connection reset by peer",
        "redis: Server closed the connection",
        "redis: MISCONF Redis is configured to save RDB snapshots",
        /* what the saga steps say when a cluster master is away (saga.c,
         * lua/line.c: a pipeline short of replies, a reply missing, an
         * error reply) */
        "redis: Redis at 127.0.0.1:7001: Connection refused",
        "line script: redis: no reply (no answer within 5000 ms)",
        "step script: redis: no reply (Redis at 127.0.0.1:7002: Server closed the connection)",
        "line script: redis: TRYAGAIN Multiple keys request during rehashing of slot",
    };
    static const char *const no[] = {
        "read-model update failed: redis: WRONGTYPE Operation against a key holding the wrong kind of value",
        "redis: BUSYGROUP Consumer Group name already exists",
        "redis: ERR Error running script",
        "webhook answered HTTP 503",
        "POST http://127.0.0.1:1/: connection closed before an answer (or refused)",
        "LOADING without the redis prefix is someone else's word",
        "",
    };
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        cr_assert(wk_reason_is_unavailable(yes[i]), "%s", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        cr_assert(!wk_reason_is_unavailable(no[i]), "%s", no[i]);
    cr_assert(!wk_reason_is_unavailable(NULL));
}
