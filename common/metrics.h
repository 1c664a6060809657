/* metrics.h - a process-wide Prometheus registry: counters, gauges and
 * histograms with labels, rendered in the text exposition format.
 *
 * Looking a series up takes a short lock; updating it is a lock-free atomic,
 * so hot paths look a series up once and keep the pointer (series live until
 * exit). Label sets are passed pre-rendered (`topic="x",type="y"`); build them
 * with cm_metrics_labels, which escapes values. */
#ifndef CM_METRICS_H
#define CM_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct cm_series cm_series;

cm_series *cm_counter(const char *name, const char *help, const char *labels);
cm_series *cm_gauge(const char *name, const char *help, const char *labels);
/* Histogram with the default latency buckets (0.5 ms .. 10 s). */
cm_series *cm_histogram(const char *name, const char *help, const char *labels);

void cm_series_inc(cm_series *s);              /* counter += 1 */
void cm_series_add(cm_series *s, uint64_t v);  /* counter += v */
void cm_series_set(cm_series *s, double v);    /* gauge = v */
void cm_series_observe(cm_series *s, double seconds);
uint64_t cm_series_count(const cm_series *s);  /* counter value / histogram count */

/* Renders `k1="v1",k2="v2"` from NULL-terminated key/value pairs into out
 * (truncated to outlen). */
void cm_metrics_labels(char *out, size_t outlen, ...) __attribute__((sentinel));

/* Appends every series to out in the text exposition format. */
void cm_metrics_render(cm_buf *out);

/* Health callback for cm_metrics_serve: fills out with a JSON body and
 * returns the HTTP status (200 healthy, 503 not). */
typedef int (*cm_health_fn)(void *ud, cm_buf *out);

typedef struct cm_metrics_server cm_metrics_server;

/* Serves GET /metrics and GET /health on 0.0.0.0:port from a background
 * thread (libmicrohttpd). Returns NULL with err when the port cannot be bound.
 * port 0 means "do not serve" and also returns NULL with err empty. */
cm_metrics_server *cm_metrics_serve(int port, cm_health_fn health, void *ud, char *err, size_t errlen);
void cm_metrics_server_free(cm_metrics_server *s);   /* stops the thread; NULL ok */

#endif
