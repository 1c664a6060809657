/* api_int.h - internals shared by the API's .c files: settings, the request
 * object handlers fill in, the route table, per-thread Redis, long-poll
 * waiters.
 *
 * Request lifecycle (server.c): libmicrohttpd calls the access handler once
 * when the headers are in (the request is routed and its headers checked),
 * once per body chunk (kept up to API_BODY_MAX), then once more when the
 * request is complete: the route's handler runs then, fills rq->status and
 * rq->out, and the server queues the response, logs a line and counts it. A
 * handler may instead suspend the connection (long-poll); it is called again
 * after the connection is resumed. */
#ifndef API_INT_H
#define API_INT_H

#include <hiredis/hiredis.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/cluster.h"
#include "common/redis.h"
#include "event_store/store.h"

#define API_BODY_MAX (64 * 1024)        /* request bodies above this: 413 */
#define API_BODY_DISCARD_MAX (1 << 20)  /* chunked overflow drained before closing */
#define API_ID_MAX 64                   /* client, product and checkout ids */
#define API_WAIT_MAX_MS 30000           /* cap of ?wait_ms */

/* Settings (main.c's table); read-only once the daemon runs. */
typedef struct api_cfg {
    int64_t port;
    char *redis_url;
    char *bus;                 /* base name: cm_key_bus gives each partition's */
    int64_t partitions;        /* PARTITIONS */
    char *admin_token;         /* NULL or empty: admin routes answer 403 */
    int64_t threads;
    int64_t redis_timeout_ms;
    int64_t conn_timeout_s;      /* libmicrohttpd's idle timeout */
    int64_t max_conns;           /* all client connections */
    int64_t max_conns_per_ip;    /* per client address; 0: no limit */
    int64_t request_timeout_s;   /* a request's headers and body must be in by then */
    int64_t long_polls_max;      /* long-polls waiting at once; more answer at once */
    int64_t probe_ms;            /* Redis probe period */
    int64_t wait_replicas;       /* REDIS_WAIT_REPLICAS: a 202 waits for this many replicas; 0 = off */
    int64_t wait_timeout_ms;     /* REDIS_WAIT_TIMEOUT_MS: the WAIT's timeout */
} api_cfg;

#define API_ADMIN_TOKEN_MIN 16   /* shorter CHORUS_ADMIN_TOKEN: the API refuses to start */

extern api_cfg g_api;

/* ---- requests and routes (server.c, routes.c) ---- */

typedef enum api_flow { API_DONE, API_SUSPENDED } api_flow;

typedef struct api_req api_req;
typedef api_flow (*api_handler_fn)(api_req *rq);

enum api_route_flags {
    API_F_JSON = 1,   /* takes a JSON body: Content-Type checked (415) */
    API_F_ADMIN = 2,  /* needs the admin bearer token (401/403) */
    API_F_IDEM = 4,   /* reads an Idempotency-Key header (400 when malformed) */
    API_F_REDIS = 8,  /* needs Redis: 503 at once while Redis is known unreachable */
    API_F_ASYNC = 16, /* the handler runs on a Redis thread, never on an HTTP one */
};

typedef struct api_route {
    const char *method;      /* "GET", "POST", "PUT" (GET also serves HEAD) */
    const char *tmpl;        /* "/api/checkouts/{id}": at most one {param} */
    api_handler_fn fn;
    unsigned flags;
    const char *label;       /* metrics route label; NULL: tmpl */
} api_route;

/* Long-poll registration of one request (waiters.c). */
typedef struct api_waiter {
    char id[API_ID_MAX + 1];         /* checkout id waited on */
    struct MHD_Connection *conn;
    int64_t deadline_ms;             /* monotonic */
    int state;                       /* enum in waiters.c */
    struct api_waiter *next;         /* hash chain */
    size_t heap_idx;                 /* position in the deadline heap */
} api_waiter;

/* One intake waiting for the batcher (batch.c): its lines, the script call
 * the batcher builds once it has read their prices, and, for the answer,
 * what the handler prepared. Owned by its request. */
typedef struct api_job {
    cm_argv argv;                    /* keys then args of lua/intake.lua (built by the batcher) */
    int nkeys;
    struct MHD_Connection *conn;
    redisReply *reply;               /* set by the batcher; NULL on failure (err) */
    char err[160];
    bool done;                       /* the batcher is through with it */
    bool permanent;                  /* with err and no reply: a retry cannot help (500) */
    struct api_job *next;            /* batcher's stack */
    char checkout_id[40];            /* the id the 202 will carry */
    bool alias;                      /* came by the seed route (its 202 body differs) */
    char hash[65];                   /* body hash ("" without a key) */
    cm_buf body;                     /* the 202 body */
    /* what the call is built from (intake.c) */
    char client_id[72];
    char idem_key[132];
    size_t nlines;
    struct {
        char product_id[72];
        long long qty, price;        /* price: read by the batcher just before the call */
    } lines[100];
    int refused_line;                /* -1, or the first line whose price cannot be used */
    bool refused_broken;             /* that line's catalog entry is broken (500), not absent (422) */
    char refused_why[160];           /* what is broken about it */
    long long replicas;              /* replicas that confirmed the script's writes (WAIT);
                                      * -1: not confirmed (error, broken link); unused when off */
} api_job;

/* Runs the intake of jobs[0..n) on cc (batch.c): reads every line's price
 * (one HMGET per distinct product, pipelined, each to its product's slot),
 * builds each job's script call from them (api_job_build), sends every
 * script (each in its checkout's slot) and, with REDIS_WAIT_REPLICAS, a WAIT
 * on each master written to, all in one pipeline. Every job ends with a
 * reply or an err. */
void api_intake_run(cm_cluster *cc, cm_script *sc, api_job **jobs, size_t n);
/* Builds j's script call from its lines and their prices (intake.c); 0, or
 * -1 when the event cannot be encoded. */
int api_job_build(api_job *j) __attribute__((warn_unused_result));

struct api_req {
    struct MHD_Connection *conn;
    const api_route *route;          /* NULL when no route matched */
    int label;                       /* metrics route label index */
    int method_idx;                  /* metrics method label index */
    char *path;                      /* copy of the URL path (owned) */
    char *param;                     /* the {param} segment inside path, or NULL */
    size_t param_len;
    cm_buf body;                     /* request body, at most API_BODY_MAX */
    size_t body_seen;                /* bytes received, kept or not */
    char idem_key[129];              /* Idempotency-Key, "" when absent */
    /* an answer decided from the headers, sent once the body is in */
    int pre_status;
    const char *pre_code;
    char pre_msg[160];
    char allow[64];                  /* Allow header for 405 */
    /* the response */
    int status;
    cm_buf out;
    const char *content_type;        /* NULL: application/json */
    char location[96];               /* Location header, "" when none */
    bool retry_after;                /* Retry-After: 1 (with 503) */
    bool replayed;                   /* Idempotency-Replayed: true */
    const struct api_asset *asset;   /* a console file: ETag and cache headers (ui.c) */
    char checkout_id[API_ID_MAX + 1];/* for the request log */
    int64_t t0_ns;                   /* monotonic start */
    api_job *job;                    /* intake in progress (intake.c) */
    /* the Redis threads (server.c): a handler of an API_F_ASYNC route runs
     * there while the connection is suspended ("held") */
    int exec;                        /* EXEC_* in server.c */
    bool held;                       /* running on a Redis thread, connection suspended */
    struct api_req *exec_next;       /* queue link */
    /* long-poll state (checkouts.c) */
    bool waiting;
    int64_t wait_deadline_ms;
    api_waiter w;
};

/* Starts the HTTP daemon on g_api.port with g_api.threads pool threads, its
 * connection limits, and the thread that closes connections whose request
 * is not in within g_api.request_timeout_s. Returns NULL with err when the
 * port cannot be bound. */
struct MHD_Daemon *api_server_start(char *err, size_t errlen);
/* Stops d (MHD_stop_daemon) and then the deadline thread. */
void api_server_stop(struct MHD_Daemon *d);

/* Sets an error answer {"error":{"code","message"}} with status. */
void api_error(api_req *rq, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* 503 unavailable, retryable, after a Redis failure (detail logged, at
 * most once a second per route, not sent). */
void api_unavailable(api_req *rq, const char *detail);
/* Answers a failed Redis call by what it means (cm_redis_fault_of): 503
 * unavailable when Redis cannot serve now (unreachable, loading, busy,
 * failing over...), 500 internal when a retry cannot fix it (WRONGTYPE, a
 * script's runtime error). r is the error reply or NULL (not freed); detail
 * is logged, never sent. An unreachable Redis also sets the shared state. */
void api_redis_failed(api_req *rq, const redisReply *r, const char *detail);
/* The same for a fault already classified (api_redis.fault after
 * api_redis_ok said false). */
void api_redis_fail(api_req *rq, cm_redis_fault f, const char *detail);
/* Sets status; the body is whatever the handler put in rq->out. */
void api_reply(api_req *rq, int status);
/* Returns the value of query argument name, or NULL. */
const char *api_query(api_req *rq, const char *name);
/* Returns the value of request header name, or NULL. */
const char *api_header(api_req *rq, const char *name);

/* The route table (routes.c). Matches path (no query, no trailing slash but
 * "/") and method; returns the route, or NULL with *label set and, when the
 * path exists for other methods, allow filled ("GET, HEAD, PUT"). *param
 * points to the {param} segment inside path (length *param_len). */
const api_route *api_route_find(char *path, const char *method, char **param, size_t *param_len,
                                int *label, char *allow, size_t allowlen);
/* Route labels for metrics: api_route_labels[i], i < api_route_nlabels, the
 * last one "unmatched"; filled by api_routes_init (once, at start, before the
 * metrics and the first request). */
#define API_MAX_ROUTE_LABELS 32
extern const char *api_route_labels[API_MAX_ROUTE_LABELS];
extern int api_route_nlabels;
void api_routes_init(void);

/* Handlers (one file per area). */
api_flow api_h_checkout_post(api_req *rq);     /* intake.c */
api_flow api_h_checkout_alias(api_req *rq);
api_flow api_h_checkout_get(api_req *rq);      /* checkouts.c */
api_flow api_h_stream_events(api_req *rq);
api_flow api_h_streams(api_req *rq);   /* GET /api/event-store/streams */     /* queries.c */
api_flow api_h_replay(api_req *rq);
api_flow api_h_orders_by_client(api_req *rq);
api_flow api_h_products(api_req *rq);          /* catalog.c */
api_flow api_h_product_get(api_req *rq);
api_flow api_h_product_put(api_req *rq);
api_flow api_h_workers(api_req *rq);           /* ops.c */
api_flow api_h_dead_letters(api_req *rq);
api_flow api_h_dead_letter_retry(api_req *rq);
api_flow api_h_dead_letters_retry_bulk(api_req *rq);
api_flow api_h_health(api_req *rq);
api_flow api_h_ready(api_req *rq);
api_flow api_h_metrics(api_req *rq);
api_flow api_h_timeline(api_req *rq);          /* timeline.c */
api_flow api_h_client_checkouts(api_req *rq);  /* clients.c */
api_flow api_h_saga_stats(api_req *rq);
api_flow api_h_ui_index(api_req *rq);          /* ui.c */
api_flow api_h_ui_asset(api_req *rq);

/* Counts an accepted checkout and its CheckoutInitiated (intake.c). */
void api_intake_metrics_init(void);

/* ---- per-thread Redis (redis_tls.c) ---- */

typedef struct api_redis {
    cm_cluster *cc;            /* REDIS_URL's server or cluster; commands routed by slot */
    cm_script intake;          /* lua/intake.lua with the append library */
    cm_script product_put;     /* lua/product_put.lua */
    cm_script saga_stats;      /* lua/saga_stats.lua */
    cm_redis_fault fault;      /* what the last failure was (api_redis_ok) */
    long epoch;                /* the shared state's recovery count at connect */
    char err[256];             /* last failure */
} api_redis;

/* A new client on REDIS_URL with the API's timeouts and no retries (a
 * failure is answered at once). NULL with err. Caller frees (cm_cluster_free). */
cm_cluster *api_cluster_open(char *err, size_t errlen);
/* This thread's client, opened on first use. Returns NULL when Redis cannot
 * be reached; the reason is in *why (static per-thread text). The object
 * lives until the thread exits. */
api_redis *api_redis_get(const char **why);
/* api_redis_get for a handler: NULL after answering rq 503 with the reason. */
api_redis *api_redis_for(api_req *rq);
/* Checks reply r of a call on t->cc: true when it is usable (caller still
 * frees it). Otherwise false, r freed, the reason in t->err and its class
 * in t->fault (answer with api_redis_fail); an unreachable Redis also sets
 * the shared state. */
bool api_redis_ok(api_redis *t, redisReply *r);
/* Runs pipeline p: true when every command has a reply (some may be error
 * replies: check each with api_redis_ok), else false as api_redis_ok. */
bool api_pipe_run(api_redis *t, cm_pipe *p);
/* Answers the failure of an event-store call made on t->cc (detail: its
 * message; NULL: t->err): 503 when no node answered or Redis cannot serve
 * now, 500 when the error reply means a retry cannot help. */
void api_redis_failed_call(api_req *rq, api_redis *t, const char *detail);
/* The cluster slot of a key (cm_key_slot). */
int api_slot(const char *key);

/* The shared Redis state: one flag for every thread. A call that finds Redis
 * unreachable sets it (api_redis_mark_down); from then on requests needing
 * Redis answer 503 at once, without waiting for a timeout, until the probe
 * thread (a PING every g_api.probe_ms on its own connection) gets an answer
 * and clears it. The probe also finds a hung Redis when no request does. */
bool api_redis_reachable(void);
/* Counts the recoveries of the shared Redis state: a connection made before
 * the latest one may be dead without knowing it (Redis restarted). */
long api_redis_epoch(void);
/* Marks Redis unreachable for reason why (masked text; copied). */
void api_redis_mark_down(const char *why);
/* Copies why Redis is unreachable ("" when it is reachable) into out. */
void api_redis_down_reason(char *out, size_t outlen);
/* Starts / stops the probe thread. 0 or -1 with err. */
int api_redis_probe_start(char *err, size_t errlen) __attribute__((warn_unused_result));
void api_redis_probe_stop(void);

/* ---- intake batcher (batch.c) ---- */

/* Starts the batcher thread (its own Redis connection). 0 or -1 with err. */
int api_batch_start(char *err, size_t errlen) __attribute__((warn_unused_result));
/* Refuses new jobs, waits until every accepted one is answered, joins. */
void api_batch_stop(void);
/* Suspends j->conn and queues j; the connection is resumed when j->done.
 * Returns false (nothing done) when the batcher is not running: the caller
 * calls Redis itself. */
bool api_batch_submit(api_job *j);
void api_job_free(api_job *j);   /* NULL ok */

/* ---- long-poll waiters (waiters.c) ---- */

/* Starts the subscriber thread (own connection, SUBSCRIBE to the read-model
 * change channel, deadline timer). Returns 0 or -1 with err. */
int api_waiters_start(char *err, size_t errlen) __attribute__((warn_unused_result));
/* Wakes every waiter, refuses new ones, stops and joins the thread. */
void api_waiters_stop(void);
/* Registers w for checkout id until deadline (monotonic ms). Returns false
 * when shutting down or when g_api.long_polls_max long-polls already wait
 * (answer at once with the current state then). */
bool api_wait_arm(api_waiter *w, struct MHD_Connection *conn, const char *id, int64_t deadline_ms);
/* Suspends w's connection unless w already fired (a change or the deadline
 * arrived since api_wait_arm). Returns true if suspended: return API_SUSPENDED.
 * held: the connection is suspended already (the handler runs on a Redis
 * thread); the waiter then takes it over as it is and resumes it later. */
bool api_wait_suspend(api_waiter *w, bool held);
/* Unregisters w if still registered. */
void api_wait_disarm(api_waiter *w);

/* ---- the console's static files (ui.c; table generated at build time by
 * tools/embed_files.py from api/ui/) ---- */

typedef struct api_asset {
    const char *name;                /* "app.js": served at /ui/<name> */
    const char *content_type;
    const char *etag;                /* quoted strong ETag of the bytes */
    const unsigned char *data;
    size_t len;
} api_asset;

extern const api_asset api_ui_assets[];
extern const size_t api_ui_assets_count;

/* ---- small shared helpers (util.c) ---- */

/* True if s looks like a stream id: digits, optionally "-" digits, each part
 * fitting in 64 bits. */
bool api_stream_id_valid(const char *s);
/* Appends a Redis string as a JSON number when it is one, else as a JSON
 * string; "null" for NULL. */
void api_json_num_or_str(cm_buf *b, const char *s, size_t n);
/* Appends a JSON string, or null when s is NULL. */
void api_json_str_or_null(cm_buf *b, const char *s, size_t n);
/* Value of field name in a flat [k, v, k, v...] reply (XINFO, XRANGE fields),
 * or NULL. Borrowed from kv. */
const redisReply *api_kv_field(const redisReply *kv, const char *name);
/* Compares two valid stream ids (api_stream_id_valid) numerically: <0, 0, >0. */
int api_stream_id_cmp(const char *a, const char *b);

#endif
