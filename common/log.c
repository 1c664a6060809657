/* log.c - JSON-lines logger. A line is built in a buffer and written with one
 * write(2) so concurrent writers never interleave within a line. */
#include "common/log.h"
#include "common/buf.h"
#include "common/clock.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_component[64] = "chorus";
static enum cm_level g_level = CM_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void cm_log_init(const char *component)
{
    snprintf(g_component, sizeof g_component, "%s", component ? component : "chorus");
    const char *lv = getenv("LOG_LEVEL");
    if (lv) {
        for (int i = CM_DEBUG; i <= CM_ERROR; i++)
            if (strcmp(lv, level_names[i]) == 0)
                g_level = (enum cm_level)i;
    }
}

void cm_log_set_level(enum cm_level lvl)
{
    g_level = lvl;
}

int cm_log_enabled(enum cm_level lvl)
{
    return lvl >= g_level;
}

static void emit(enum cm_level lvl, const char *checkout_id, const char *event_id,
                 const char *const *kv, long long repeated, const char *fmt, va_list ap)
{
    char msg[1024];
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    size_t mlen = n < 0 ? 0 : ((size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    if (repeated > 0) {
        int k = snprintf(msg + mlen, sizeof msg - mlen, " (repeated %lld times)", repeated);
        if (k > 0)
            mlen += (size_t)k < sizeof msg - mlen ? (size_t)k : sizeof msg - mlen - 1;
    }

    cm_buf b = CM_BUF_INIT;
    cm_buf_printf(&b, "{\"level\":\"%s\",\"ts\":%.3f,\"component\":", level_names[lvl], cm_wall_s());
    cm_buf_put_json_str(&b, g_component, strlen(g_component));
    cm_buf_puts(&b, ",\"message\":");
    cm_buf_put_json_str(&b, msg, mlen);
    if (checkout_id) {
        cm_buf_puts(&b, ",\"checkout_id\":");
        cm_buf_put_json_str(&b, checkout_id, strlen(checkout_id));
    }
    if (event_id) {
        cm_buf_puts(&b, ",\"event_id\":");
        cm_buf_put_json_str(&b, event_id, strlen(event_id));
    }
    for (; kv && kv[0] && kv[1]; kv += 2) {
        cm_buf_putc(&b, ',');
        cm_buf_put_json_str(&b, kv[0], strlen(kv[0]));
        cm_buf_putc(&b, ':');
        cm_buf_put_json_str(&b, kv[1], strlen(kv[1]));
    }
    cm_buf_puts(&b, "}\n");
    ssize_t w = write(STDERR_FILENO, b.data, b.len);
    (void)w;
    cm_buf_free(&b);
}

void cm_log(enum cm_level lvl, const char *fmt, ...)
{
    if (lvl < g_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    emit(lvl, NULL, NULL, NULL, 0, fmt, ap);
    va_end(ap);
}

void cm_logx(enum cm_level lvl, const char *checkout_id, const char *event_id,
             const char *const *kv, const char *fmt, ...)
{
    if (lvl < g_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    emit(lvl, checkout_id, event_id, kv, 0, fmt, ap);
    va_end(ap);
}

/* ---- rate-limited lines: one slot per key hash, one lock for all ---- */

#define RL_SLOTS 64
#define RL_PERIOD_MS 1000

typedef struct rl_slot {
    uint64_t hash;        /* key hash; 0: free */
    int64_t last_ms;      /* when a line was last written */
    long long dropped;    /* calls since then that wrote nothing */
} rl_slot;

static struct {
    pthread_mutex_t lock;
    rl_slot slot[RL_SLOTS];
} g_rl = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t key_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h ? h : 1;
}

void cm_log_limited(enum cm_level lvl, const char *key, const char *fmt, ...)
{
    if (lvl < g_level)
        return;
    uint64_t h = key_hash(key ? key : fmt);
    int64_t now = cm_mono_ms();
    long long repeated = -1;   /* -1: drop this one */
    pthread_mutex_lock(&g_rl.lock);
    rl_slot *s = &g_rl.slot[h % RL_SLOTS];
    if (s->hash != h) {   /* a new key (or a collision): it takes the slot */
        s->hash = h;
        s->last_ms = now;
        s->dropped = 0;
        repeated = 0;
    } else if (now - s->last_ms >= RL_PERIOD_MS) {
        repeated = s->dropped;
        s->last_ms = now;
        s->dropped = 0;
    } else {
        s->dropped++;
    }
    pthread_mutex_unlock(&g_rl.lock);
    if (repeated < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    emit(lvl, NULL, NULL, NULL, repeated, fmt, ap);
    va_end(ap);
}
