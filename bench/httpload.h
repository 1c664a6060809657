/* httpload.h - an HTTP/1.1 keep-alive load generator for benchmarks.
 *
 * One thread drives many connections over epoll. Two modes:
 *
 *   closed loop (rate == 0): every connection sends its next request as soon
 *     as the previous answer is in; this finds the maximum throughput, and a
 *     request's latency runs from its actual send.
 *   open loop (rate > 0): request i is *scheduled* at start + i/rate whatever
 *     the server does; it goes out on the first idle connection, waiting in a
 *     queue when none is idle, and its latency runs from its scheduled time,
 *     not from when it could be sent. A server that stalls is therefore
 *     charged for every request it delayed (no coordinated omission).
 *
 * Requests are raw bytes from a caller's callback, so any method, header or
 * body can be sent and each request can differ (idempotency keys...).
 * Responses are framed by Content-Length (no chunked bodies); "Connection:
 * close" and broken connections are reconnected, and what was in flight on
 * them is counted as an error.
 *
 * Latencies go to a log-linear histogram (1 us resolution below 128 us,
 * about 1.6% relative above) that answers percentiles. */
#ifndef HTTPLOAD_H
#define HTTPLOAD_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

/* Writes request number seq (raw HTTP/1.1 bytes) into buf (cap bytes) and
 * returns its length, or 0 when it does not fit. */
typedef size_t (*hl_build_fn)(void *ud, uint64_t seq, char *buf, size_t cap);

/* One answer, for hl_config.on_answer: the request's seq, its status and
 * body (not NUL-terminated, valid during the call only), its latency origin
 * and completion time (CLOCK_MONOTONIC ns), and whether it is measured. */
typedef struct hl_answer {
    uint64_t seq;
    int status;
    const char *body;
    size_t body_len;
    int64_t origin_ns, done_ns;
    int measured;
} hl_answer;
typedef void (*hl_answer_fn)(void *ud, const hl_answer *a);

/* Closed loop: asked before each new request; false holds it back until
 * hl_config.wake_fd turns readable (or 10 ms pass). */
typedef int (*hl_gate_fn)(void *ud);

typedef struct hl_config {
    int port;                 /* 127.0.0.1:port */
    int conns;                /* connections, >= 1 */
    double rate;              /* requests per second; 0 = closed loop */
    int64_t warmup_ms;        /* run, but do not record, this long first */
    int64_t duration_ms;      /* then measure this long */
    int64_t timeout_ms;       /* a request without an answer this long is an error (default 10000) */
    int expect_status;        /* answers with this status count as ok (0: any 2xx) */
    size_t max_request;       /* largest request build may write (default 16 KiB) */
    hl_build_fn build;
    void *ud;
    hl_answer_fn on_answer;   /* optional: called on every answer */
    hl_gate_fn gate;          /* optional, closed loop: may a request start now? */
    int wake_fd;              /* optional (> 0): an eventfd written when the gate may pass again */
    bool resend_unanswered;   /* the requests are safe to send twice (an Idempotency-Key each): one whose
                               * kept-alive connection closes before any byte of its answer (the server
                               * dropping an idle connection as the request arrives) is sent again, once, on
                               * a new connection, its latency still counted from its first origin */
} hl_config;

#define HL_BUCKETS 2048

typedef struct hl_hist {
    uint64_t count[HL_BUCKETS];
    uint64_t total;
    uint64_t max_us;
    double sum_us;
} hl_hist;

typedef struct hl_result {
    uint64_t sent;            /* requests written in the measured window */
    uint64_t ok;              /* answers with the expected status */
    uint64_t other_status;    /* answers with another status */
    uint64_t errors;          /* broken connections, timeouts, unparsable answers */
    uint64_t resent;          /* requests sent again after their connection closed unanswered */
    uint64_t unsent;          /* open loop: scheduled but never sent before the end */
    double elapsed_s;         /* the measured window */
    double ok_per_s;          /* ok / elapsed_s */
    int last_other_status;    /* the last unexpected status seen (for diagnostics) */
    hl_hist lat;              /* latency of the measured answers (any status) */
    int64_t t_measure_ns, t_end_ns;  /* the measured window (CLOCK_MONOTONIC ns) */
} hl_result;

/* Runs the load described by cfg and fills out. Returns 0, or -1 with err
 * when it could not run at all (no connection could be made). */
int hl_run(const hl_config *cfg, hl_result *out, char *err, size_t errlen);

/* The latency at quantile q (0..1) in milliseconds; 0 when empty. */
double hl_percentile_ms(const hl_hist *h, double q);
double hl_mean_ms(const hl_hist *h);

/* Records one latency (microseconds) into h. */
void hl_hist_record(hl_hist *h, uint64_t us);

#endif
