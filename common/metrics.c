/* metrics.c - Prometheus registry and the worker-side /metrics server. */
#include "common/metrics.h"
#include "common/xmalloc.h"

#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kind { K_COUNTER, K_GAUGE, K_HISTOGRAM };

static const double k_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define NBUCKETS (sizeof k_buckets / sizeof k_buckets[0])

struct cm_series {
    char *name, *help, *labels;
    enum kind kind;
    _Atomic uint64_t value;              /* counter; gauge holds a double's bits */
    _Atomic uint64_t buckets[NBUCKETS];  /* histogram: non-cumulative counts */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_ns;             /* histogram sum in nanoseconds */
    cm_series *next;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static cm_series *g_head, *g_tail;   /* registration order, families grouped at render */

static cm_series *lookup(const char *name, const char *help, const char *labels, enum kind k)
{
    if (!labels)
        labels = "";
    pthread_mutex_lock(&g_lock);
    for (cm_series *s = g_head; s; s = s->next) {
        if (s->kind == k && !strcmp(s->name, name) && !strcmp(s->labels, labels)) {
            pthread_mutex_unlock(&g_lock);
            return s;
        }
    }
    cm_series *s = cm_xcalloc(1, sizeof *s);
    s->name = cm_xstrdup(name);
    s->help = cm_xstrdup(help ? help : name);
    s->labels = cm_xstrdup(labels);
    s->kind = k;
    if (g_tail)
        g_tail->next = s;
    else
        g_head = s;
    g_tail = s;
    pthread_mutex_unlock(&g_lock);
    return s;
}

cm_series *cm_counter(const char *name, const char *help, const char *labels)
{
    return lookup(name, help, labels, K_COUNTER);
}

cm_series *cm_gauge(const char *name, const char *help, const char *labels)
{
    return lookup(name, help, labels, K_GAUGE);
}

cm_series *cm_histogram(const char *name, const char *help, const char *labels)
{
    return lookup(name, help, labels, K_HISTOGRAM);
}

void cm_series_inc(cm_series *s)
{
    atomic_fetch_add_explicit(&s->value, 1, memory_order_relaxed);
}

void cm_series_add(cm_series *s, uint64_t v)
{
    atomic_fetch_add_explicit(&s->value, v, memory_order_relaxed);
}

void cm_series_set(cm_series *s, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    atomic_store_explicit(&s->value, bits, memory_order_relaxed);
}

void cm_series_observe(cm_series *s, double seconds)
{
    if (!(seconds >= 0))
        seconds = 0;
    size_t i = 0;
    while (i < NBUCKETS && seconds > k_buckets[i])
        i++;
    if (i < NBUCKETS)
        atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->sum_ns, (uint64_t)(seconds * 1e9), memory_order_relaxed);
}

uint64_t cm_series_count(const cm_series *s)
{
    if (s->kind == K_HISTOGRAM)
        return atomic_load_explicit(&s->count, memory_order_relaxed);
    return atomic_load_explicit(&s->value, memory_order_relaxed);
}

void cm_metrics_labels(char *out, size_t outlen, ...)
{
    va_list ap;
    va_start(ap, outlen);
    size_t o = 0;
    const char *k;
    if (outlen)
        out[0] = '\0';
    while ((k = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        if (!v)
            break;
        int n = snprintf(out + o, o < outlen ? outlen - o : 0, "%s%s=\"", o ? "," : "", k);
        o += n > 0 ? (size_t)n : 0;
        for (; *v && o + 3 < outlen; v++) {
            if (*v == '"' || *v == '\\' || *v == '\n') {
                out[o++] = '\\';
                out[o++] = *v == '\n' ? 'n' : *v;
            } else {
                out[o++] = *v;
            }
        }
        if (o + 1 < outlen)
            out[o++] = '"';
        if (o < outlen)
            out[o] = '\0';
    }
    va_end(ap);
    if (outlen)
        out[outlen - 1 < o ? outlen - 1 : o] = '\0';
}

static const char *type_name(enum kind k)
{
    return k == K_COUNTER ? "counter" : k == K_GAUGE ? "gauge" : "histogram";
}

static void render_series(cm_buf *out, const cm_series *s)
{
    const char *sep = s->labels[0] ? "," : "";
    if (s->kind == K_COUNTER) {
        cm_buf_printf(out, "%s%s%s%s %llu\n", s->name, s->labels[0] ? "{" : "", s->labels, s->labels[0] ? "}" : "",
                      (unsigned long long)atomic_load(&s->value));
    } else if (s->kind == K_GAUGE) {
        uint64_t bits = atomic_load(&s->value);
        double v;
        memcpy(&v, &bits, sizeof v);
        cm_buf_printf(out, "%s%s%s%s %.17g\n", s->name, s->labels[0] ? "{" : "", s->labels, s->labels[0] ? "}" : "", v);
    } else {
        uint64_t cum = 0;
        for (size_t i = 0; i < NBUCKETS; i++) {
            cum += atomic_load(&s->buckets[i]);
            cm_buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", s->name, s->labels, sep, k_buckets[i],
                          (unsigned long long)cum);
        }
        uint64_t count = atomic_load(&s->count);
        cm_buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", s->name, s->labels, sep,
                      (unsigned long long)count);
        cm_buf_printf(out, "%s_sum{%s} %.9f\n", s->name, s->labels, (double)atomic_load(&s->sum_ns) / 1e9);
        cm_buf_printf(out, "%s_count{%s} %llu\n", s->name, s->labels, (unsigned long long)count);
    }
}

void cm_metrics_render(cm_buf *out)
{
    pthread_mutex_lock(&g_lock);
    /* Group series by family: print each family's header once, then all of
     * its series, in first-registration order. */
    for (cm_series *f = g_head; f; f = f->next) {
        bool seen = false;
        for (cm_series *p = g_head; p != f; p = p->next)
            if (!strcmp(p->name, f->name)) {
                seen = true;
                break;
            }
        if (seen)
            continue;
        cm_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, type_name(f->kind));
        for (cm_series *s = f; s; s = s->next)
            if (!strcmp(s->name, f->name))
                render_series(out, s);
    }
    pthread_mutex_unlock(&g_lock);
}

struct cm_metrics_server {
    struct MHD_Daemon *d;
    cm_health_fn health;
    void *ud;
};

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_size,
                              void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_size;
    (void)con_cls;
    cm_metrics_server *srv = cls;
    cm_buf body = CM_BUF_INIT;
    int status = 200;
    const char *ctype = "application/json";
    if (strcmp(method, "GET") != 0) {
        status = 405;
        cm_buf_puts(&body, "{\"error\":{\"code\":\"method_not_allowed\",\"message\":\"use GET\"}}");
    } else if (!strcmp(url, "/metrics")) {
        ctype = "text/plain; version=0.0.4";
        cm_metrics_render(&body);
    } else if (!strcmp(url, "/health")) {
        status = srv->health ? srv->health(srv->ud, &body) : 200;
        if (!body.len)
            cm_buf_puts(&body, "{\"status\":\"ok\"}");
    } else {
        status = 404;
        cm_buf_puts(&body, "{\"error\":{\"code\":\"not_found\",\"message\":\"try /metrics or /health\"}}");
    }
    size_t len = body.len;
    struct MHD_Response *r = MHD_create_response_from_buffer(len, cm_buf_steal(&body), MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", ctype);
    if (status == 405)
        MHD_add_response_header(r, "Allow", "GET");
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

cm_metrics_server *cm_metrics_serve(int port, cm_health_fn health, void *ud, char *err, size_t errlen)
{
    if (errlen)
        err[0] = '\0';
    if (port <= 0)
        return NULL;
    cm_metrics_server *s = cm_xcalloc(1, sizeof *s);
    s->health = health;
    s->ud = ud;
    s->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, (uint16_t)port, NULL, NULL,
                            answer, s, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "cannot serve metrics on port %d (in use? set METRICS_PORT)", port);
        free(s);
        return NULL;
    }
    return s;
}

void cm_metrics_server_free(cm_metrics_server *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->d);
    free(s);
}
