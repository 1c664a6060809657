/* notification.c - the notification worker: one notification per terminal
 * checkout (CheckoutSucceeded / CheckoutFailed).
 *
 * The notification log entry (chorus:notify:log) and the checkout's marker
 * (chorus:notify:<checkout_id>) are written by one script, once; any later
 * delivery of the terminal event finds the marker and adds nothing.
 *
 * With NOTIFY_WEBHOOK_URL set, the notification is also POSTed there with
 * `Idempotency-Key: <checkout_id>`. A 2xx is recorded in the marker
 * (webhook_status) and from then on the webhook is never called again for
 * that checkout; any other outcome answers WK_RETRY, so the runner retries
 * with capped exponential backoff for the group's time budget
 * (RETRY_BUDGET_MS, 6 h here): a receiver that is down for seconds or hours
 * gets every notification once it is back, and only one that stays down past
 * the budget sends notifications to the dead-letter stream. The receiver may still
 * see a second POST if this process dies between the 2xx and recording it,
 * or when two copies handle the same redelivery at once: that is what the
 * Idempotency-Key is for.
 *
 * A receiver that hangs would hold the worker NOTIFY_TIMEOUT_MS per
 * notification (the worker is synchronous). So after NOTIFY_BREAKER_AFTER
 * calls in a row that got no answer within the timeout, the breaker opens:
 * for NOTIFY_BREAKER_OPEN_MS no call is made, each notification is still
 * logged at once and answered WK_RETRY (its retry budget runs as for any
 * failure). The first notification after that is a trial call: any outcome
 * but another hang closes the breaker, a hang opens it again. Calls that
 * fail fast (refused, 5xx) never open it: they cost the worker nothing. */
#include "workers/wk.h"
#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/xmalloc.h"
#include "workers/lua/scripts.h"
#include "workers/webhook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static char *g_url;
static int64_t g_timeout_ms;
static int64_t g_ttl_s;
static int64_t g_breaker_after;
static int64_t g_breaker_open_ms;

static const cm_opt k_opts[] = {
    {"notify-webhook-url", "NOTIFY_WEBHOOK_URL", CM_OPT_STR, &g_url, NULL, 0, -1,
     "POST each notification here (http://host[:port]/path); unset: log only"},
    {"notify-timeout-ms", "NOTIFY_TIMEOUT_MS", CM_OPT_INT, &g_timeout_ms, "5000", 100, 120000,
     "webhook request timeout"},
    {"notify-ttl-s", "NOTIFY_TTL_S", CM_OPT_INT, &g_ttl_s, "604800", 0, 315360000,
     "lifetime of a checkout's notification marker and of notification log entries (0: kept)"},
    {"notify-breaker-after", "NOTIFY_BREAKER_AFTER", CM_OPT_INT, &g_breaker_after, "3", 0, 1000,
     "webhook calls in a row without an answer in time that open the breaker (0: never)"},
    {"notify-breaker-open-ms", "NOTIFY_BREAKER_OPEN_MS", CM_OPT_INT, &g_breaker_open_ms, "30000", 100, 3600000,
     "how long an open breaker skips webhook calls before one trial call"},
    {0},
};

typedef struct notify_state {
    bool webhook;             /* NOTIFY_WEBHOOK_URL set */
    wk_webhook hook;
    cm_series *notified;      /* notifications_total */
    cm_series *hook_ok, *hook_bad, *hook_err;
    int hung;                 /* calls in a row without an answer in time */
    int64_t open_until_ms;    /* breaker open until then (monotonic); 0: closed */
    cm_series *skipped, *breaker_open;
} notify_state;

static int notify_init(wk_ctx *ctx, char *err, size_t errlen)
{
    notify_state *st = cm_xcalloc(1, sizeof *st);
    if (g_url && *g_url) {
        if (wk_webhook_parse(g_url, &st->hook, err, errlen) != 0) {
            free(st);
            return -1;
        }
        st->webhook = true;
        cm_log(CM_INFO, "notifications are POSTed to http://%s:%d%s", st->hook.host, st->hook.port, st->hook.path);
    }
    st->notified = cm_counter("notifications_total", "terminal checkouts notified (once each)", "");
    st->hook_ok = cm_counter("notify_webhook_requests_total", "webhook POSTs by outcome", "result=\"2xx\"");
    st->hook_bad = cm_counter("notify_webhook_requests_total", "webhook POSTs by outcome", "result=\"non_2xx\"");
    st->hook_err = cm_counter("notify_webhook_requests_total", "webhook POSTs by outcome", "result=\"error\"");
    st->skipped = cm_counter("notify_webhook_skipped_total", "webhook calls not made while the breaker was open", "");
    st->breaker_open = cm_gauge("notify_webhook_breaker_open", "1 from the webhook breaker's opening until a call gets an answer", "");
    wk_set_state(ctx, st);
    return 0;
}

static void notify_fini(wk_ctx *ctx)
{
    free(wk_state(ctx));
    wk_set_state(ctx, NULL);
}

/* The webhook body: {"checkout_id","status","order_id"|"reason","event_id"}. */
static void build_body(const char *checkout_id, const char *status, const char *field, const char *value,
                       const char *event_id, cm_buf *b)
{
    cm_buf_puts(b, "{\"checkout_id\":");
    cm_buf_put_json_str(b, checkout_id, strlen(checkout_id));
    cm_buf_puts(b, ",\"status\":");
    cm_buf_put_json_str(b, status, strlen(status));
    cm_buf_printf(b, ",\"%s\":", field);
    cm_buf_put_json_str(b, value, strlen(value));
    cm_buf_puts(b, ",\"event_id\":");
    cm_buf_put_json_str(b, event_id, strlen(event_id));
    cm_buf_putc(b, '}');
}

/* Records a webhook outcome in the marker: the 2xx status, or one more
 * failed attempt and its error. Returns 0 or -1 with err. */
static int record_outcome(wk_ctx *ctx, const char *marker, int code, const char *error, char *err, size_t errlen)
{
    cm_cluster *cc = wk_cluster(ctx);
    int slot = cm_key_slot(marker, strlen(marker));
    redisReply *r;
    if (code >= 200 && code < 300)
        r = cm_cluster_command(cc, slot, "HSET %s webhook_status %d", marker, code);
    else
        r = cm_cluster_command(cc, slot, "HSET %s webhook_last_error %s", marker, error);
    if (cm_cluster_reply_failed(cc, r, err, errlen))
        return -1;
    freeReplyObject(r);
    r = cm_cluster_command(cc, slot, "HINCRBY %s webhook_attempts 1", marker);
    if (cm_cluster_reply_failed(cc, r, err, errlen))
        return -1;
    freeReplyObject(r);
    return 0;
}

/* Whether the breaker lets a call through now (closed, or its open time
 * is over: the trial call). */
static bool breaker_allows(const notify_state *st)
{
    return st->open_until_ms == 0 || cm_mono_ms() >= st->open_until_ms;
}

/* Counts a call's outcome: one without an answer that took the whole
 * timeout is a hang; NOTIFY_BREAKER_AFTER of them in a row (or a trial
 * call that hangs) open the breaker; any other outcome closes it. */
static void breaker_note(notify_state *st, int code, int64_t took_ms)
{
    if (code > 0 || took_ms < g_timeout_ms * 9 / 10) {
        st->hung = 0;
        if (st->open_until_ms) {
            st->open_until_ms = 0;
            cm_series_set(st->breaker_open, 0);
            cm_log(CM_INFO, "webhook call did not hang: breaker closed");
        }
        return;
    }
    st->hung++;
    if (g_breaker_after > 0 && (st->hung >= g_breaker_after || st->open_until_ms)) {
        st->open_until_ms = cm_mono_ms() + g_breaker_open_ms;
        cm_series_set(st->breaker_open, 1);
        cm_log_limited(CM_WARN, "notify-breaker", "webhook gave no answer in %lld ms %d times in a row: "
                       "breaker open, no call for %lld ms", (long long)g_timeout_ms, st->hung,
                       (long long)g_breaker_open_ms);
    }
}

static wk_result handle_terminal(wk_ctx *ctx, const es_event *ev)
{
    notify_state *st = wk_state(ctx);
    bool ok = ev->kind == CM_EV_CHECKOUT_SUCCEEDED;
    const char *checkout_id = ev->aggregate_id;
    const char *status = ok ? CM_STATUS_SUCCEEDED : CM_STATUS_FAILED;
    const char *field = ok ? "order_id" : "reason";
    const char *value = es_event_data_str(ev, field);
    if (!value)
        value = "";
    char marker[400], err[300];
    snprintf(marker, sizeof marker, "%s", cm_key_notify(checkout_id).s);

    wk_notify_in in = {.checkout_id = checkout_id, .status = status, .field = field, .value = value,
                       .event_id = ev->event_id, .ttl_s = g_ttl_s};
    wk_notify_out o;
    if (wk_script_notify(wk_cluster(ctx), &in, &o, err, sizeof err) != 0) {
        wk_fail_reason(ctx, "notification log: %s", err);
        return WK_RETRY;
    }
    bool fresh = o.fresh, delivered = o.delivered;
    if (fresh) {
        cm_series_inc(st->notified);
        cm_logx(CM_INFO, checkout_id, ev->event_id, NULL, "checkout %s notified", status);
    }
    if (!st->webhook || delivered)
        return WK_ACK;
    if (wk_stopping(ctx)) {
        wk_fail_reason(ctx, "shutting down before the webhook call");
        return WK_RETRY;
    }

    if (!breaker_allows(st)) {
        cm_series_inc(st->skipped);
        wk_fail_reason(ctx, "webhook not called: breaker open after %d calls without an answer in %lld ms, "
                       "next trial in %lld ms", st->hung, (long long)g_timeout_ms,
                       (long long)(st->open_until_ms - cm_mono_ms()));
        return WK_RETRY;
    }

    cm_buf body = CM_BUF_INIT;
    build_body(checkout_id, status, field, value, ev->event_id, &body);
    int64_t t0 = cm_mono_ms();
    int code = wk_webhook_post(&st->hook, body.data, body.len, checkout_id, (int)g_timeout_ms, err, sizeof err);
    breaker_note(st, code, cm_mono_ms() - t0);
    cm_buf_free(&body);
    if (code < 0)
        cm_series_inc(st->hook_err);
    else if (code < 200 || code >= 300) {
        cm_series_inc(st->hook_bad);
        snprintf(err, sizeof err, "webhook answered HTTP %d", code);
    } else
        cm_series_inc(st->hook_ok);
    char rerr[256];
    int rec = record_outcome(ctx, marker, code, err, rerr, sizeof rerr);
    if (code >= 200 && code < 300) {
        if (rec != 0) {   /* not recorded: the retry POSTs again (same Idempotency-Key) */
            wk_fail_reason(ctx, "webhook delivered but not recorded: %s", rerr);
            return WK_RETRY;
        }
        cm_logx(CM_INFO, checkout_id, ev->event_id, NULL, "webhook delivered (HTTP %d)", code);
        return WK_ACK;
    }
    wk_fail_reason(ctx, "%s", err);
    return WK_RETRY;
}

static const wk_handler k_handlers[] = {
    {CM_EV_CHECKOUT_SUCCEEDED, handle_terminal},
    {CM_EV_CHECKOUT_FAILED, handle_terminal},
};

const wk_def wk_notification = {
    .id = CM_W_NOTIFICATION,
    .handlers = k_handlers,
    .nhandlers = sizeof k_handlers / sizeof k_handlers[0],
    .opts = k_opts,
    .init = notify_init,
    .fini = notify_fini,
    .retry_budget_ms = 6 * 3600 * 1000,   /* a receiver's outage is waited out for hours */
};
