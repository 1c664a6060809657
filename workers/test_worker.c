/* test_worker.c - a worker for the runtime's own tests (`chorus-worker test`).
 *
 * It handles every event type and does what the event's data asks:
 *   {"mode":"ok"}                 record the effect, succeed
 *   {"mode":"fail","times":N}     fail (WK_RETRY) the first N deliveries
 *   {"mode":"fail"}               fail every delivery (dead-lettered once
 *                                 RETRY_BUDGET_MS is spent, or MAX_DELIVERIES)
 *   {"mode":"dead"}               refuse at once (WK_DEAD)
 *   {"mode":"hang","ms":M}        take M ms (calling wk_touch), then succeed
 *   {"mode":"crash"}              record the effect, then die by SIGKILL
 *                                 before the ack, on the first delivery only
 * Effects, all in Redis so a test can read them:
 *   test:handled        hash event_id -> times the effect was applied
 *   test:attempts       hash event_id -> deliveries seen by the handler
 *   test:attempt_ms:<event_id>  list of wall-clock ms of each attempt
 *   test:by_consumer    hash consumer -> effects applied
 * TEST_KEY_PREFIX (env, default "test:") replaces "test:" in those names: a
 * prefix with a {hash tag} puts every effect in one cluster slot, so a test
 * can keep them off a master it freezes.
 * TEST_HANDLE_DELAY_MS (env) slows every event, to catch a batch mid-way.
 * TEST_NOOP=1 (env) makes the handler acknowledge at once with no effect
 * and no Redis round trip: the runtime's drain benchmark measures the
 * runner alone with it. */
#include "workers/wk.h"
#include "common/clock.h"
#include "common/log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int64_t g_delay_ms;
static bool g_noop;
static char *g_prefix;

static const cm_opt k_opts[] = {
    {"handle-delay-ms", "TEST_HANDLE_DELAY_MS", CM_OPT_INT, &g_delay_ms, "0", 0, 600000, "sleep per event"},
    {"noop", "TEST_NOOP", CM_OPT_BOOL, &g_noop, "0", 0, 0, "acknowledge every event with no effect"},
    {"key-prefix", "TEST_KEY_PREFIX", CM_OPT_STR, &g_prefix, "test:", 0, -1, "prefix of the effect keys"},
    {NULL, NULL, 0, NULL, NULL, 0, 0, NULL},
};

/* Sends p (each command to its key's master) and frees the replies; the
 * first reply's integer into *first when asked. -1 on any error. */
static int run_pipeline(cm_pipe *p, long long *first)
{
    int rc = cm_pipe_exec(p) == 0 ? 0 : -1;
    for (size_t i = 0; i < cm_pipe_count(p); i++) {
        redisReply *r = cm_pipe_take(p, i);
        if (!r || r->type == REDIS_REPLY_ERROR)
            rc = -1;
        else if (i == 0 && first)
            *first = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
        freeReplyObject(r);
    }
    cm_pipe_free(p);
    return rc;
}

static int key_slot(const char *key)
{
    return cm_key_slot(key, strlen(key));
}

/* The effect key `name` under TEST_KEY_PREFIX, into out. */
static const char *effect_key(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s%s", g_prefix ? g_prefix : "test:", name);
    return out;
}

static long long attempts_of(cm_cluster *cc, const es_event *ev)
{
    char list[160], name[64], hash[96];
    snprintf(name, sizeof name, "attempt_ms:%s", ev->event_id);
    effect_key(list, sizeof list, name);
    effect_key(hash, sizeof hash, "attempts");
    cm_pipe *p = cm_pipe_new(cc);
    cm_pipe_command(p, key_slot(hash), "HINCRBY %s %s 1", hash, ev->event_id);
    cm_pipe_command(p, key_slot(list), "RPUSH %s %lld", list, (long long)cm_wall_ms());
    long long n = -1;
    if (run_pipeline(p, &n) != 0)
        return -1;
    return n;
}

static int record_effect(wk_ctx *ctx, const es_event *ev)
{
    char handled[96], by[96];
    effect_key(handled, sizeof handled, "handled");
    effect_key(by, sizeof by, "by_consumer");
    cm_pipe *p = cm_pipe_new(wk_cluster(ctx));
    cm_pipe_command(p, key_slot(handled), "HINCRBY %s %s 1", handled, ev->event_id);
    cm_pipe_command(p, key_slot(by), "HINCRBY %s %s 1", by, wk_consumer(ctx));
    return run_pipeline(p, NULL);
}

static wk_result handle(wk_ctx *ctx, const es_event *ev)
{
    if (g_noop)
        return WK_ACK;
    if (g_delay_ms)
        cm_sleep_ms(g_delay_ms);
    long long attempt = attempts_of(wk_cluster(ctx), ev);
    if (attempt < 0) {
        wk_fail_reason(ctx, "redis error recording the attempt");
        return WK_RETRY;
    }
    const char *mode = es_event_data_str(ev, "mode");
    if (!mode)
        mode = "ok";
    if (!strcmp(mode, "dead")) {
        wk_fail_reason(ctx, "test: refused");
        return WK_DEAD;
    }
    if (!strcmp(mode, "fail")) {
        json_t *t = json_object_get(ev->data, "times");
        if (!json_is_integer(t) || attempt <= json_integer_value(t)) {
            wk_fail_reason(ctx, "test: injected failure on attempt %lld", attempt);
            return WK_RETRY;
        }
    }
    if (!strcmp(mode, "hang")) {
        json_t *ms = json_object_get(ev->data, "ms");
        int64_t end = cm_mono_ms() + (json_is_integer(ms) ? json_integer_value(ms) : 1000);
        while (cm_mono_ms() < end) {
            cm_sleep_ms(50);
            wk_touch(ctx);
        }
    }
    if (record_effect(ctx, ev) != 0) {
        wk_fail_reason(ctx, "redis error recording the effect");
        return WK_RETRY;
    }
    if (!strcmp(mode, "crash") && attempt == 1) {
        cm_logx(CM_WARN, NULL, ev->event_id, NULL, "test: crashing between effect and ack");
        raise(SIGKILL);
    }
    return WK_ACK;
}

static const wk_handler k_handlers[] = {
    {CM_EV_UNKNOWN, handle},   /* every type */
};

const wk_def wk_test_worker = {
    .id = CM_W_AUDIT,   /* unused: name and group below */
    .name = "test-worker",
    .group = "test-group",
    .handlers = k_handlers,
    .nhandlers = 1,
    .opts = k_opts,
};
