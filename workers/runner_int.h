/* runner_int.h - the runtime's context, shared by runner.c (read loop,
 * dispatch, acks) and reclaim.c (retries, takeover, dead letters). */
#ifndef WK_RUNNER_INT_H
#define WK_RUNNER_INT_H

#include <signal.h>
#include <stdint.h>

#include "common/metrics.h"
#include "common/redis.h"
#include "workers/wk.h"

/* Settings of every worker (env, then flags). */
typedef struct wk_settings {
    char *redis_url;
    char *bus;
    char *consumer;           /* CONSUMER_NAME as given ({host} expanded later); NULL: <host>-<pid> */
    int64_t metrics_port;
    int64_t batch;            /* XREADGROUP COUNT */
    int64_t block_ms;         /* XREADGROUP BLOCK */
    int64_t max_deliveries;   /* optional count bound; 0 = off (the time budget rules) */
    int64_t claim_idle_ms;
    int64_t retry_base_ms;
    int64_t retry_max_ms;     /* backoff cap (clamped to CLAIM_IDLE_MS / 2) */
    int64_t retry_budget_ms;  /* how long a failing entry is retried; 0 = forever */
    int64_t retention_days;
    int64_t dead_letter_ttl_s;        /* DEAD_LETTER_TTL_S: dlq/retry stream entries' lifetime */
    int64_t redis_timeout_ms;
    int64_t partitions;       /* PARTITIONS */
    int64_t wait_replicas;    /* REDIS_WAIT_REPLICAS: acks wait for this many replicas; 0 = off */
    int64_t wait_timeout_ms;  /* REDIS_WAIT_TIMEOUT_MS */
} wk_settings;

/* The streams a group reads: for each partition p its bus (index 2p) and
 * this group's redelivery stream of that bus (2p + 1). */
enum { WK_STREAM_BUS, WK_STREAM_RETRY };
#define WK_STREAM_IS_RETRY(s) (((s) & 1) == WK_STREAM_RETRY)
#define WK_STREAM_BUS_OF(s) ((s) & ~1)     /* the bus stream of s's partition */

/* One blocking XREADGROUP in flight on its own libevent async connection to
 * the master owning its streams. On a single server one reader holds every
 * stream; on a cluster a command's keys must share one slot (CROSSSLOT
 * otherwise, even on one master), so each slot's streams (a partition's bus
 * and redelivery stream, same {p<p>} tag) are a reader of their own. */
typedef struct wk_reader {
    struct wk_ctx *ctx;
    struct redisAsyncContext *ac;     /* NULL once closed or lost */
    cm_redis_url addr;                /* the master's address and credentials */
    int slot;                         /* the streams' slot (CM_SLOT_ANY on a single server) */
    int *streams;                     /* indexes into ctx->streams */
    int nstreams;
    bool in_flight;                   /* an XREADGROUP was sent and has not answered */
    bool closing;                     /* freed by us: callbacks only record */
    bool stale;                       /* its read went unanswered: reconnect, never reuse */
    int64_t sent_ms;                  /* when the read in flight was sent */
    int64_t resume_ms;                /* no read before (CLUSTERDOWN / TRYAGAIN backoff) */
    int64_t backoff_ms;
} wk_reader;

struct wk_ctx {
    const wk_def *def;
    wk_settings set;
    const char *group;
    char consumer[160];
    int nstreams;                     /* 2 * PARTITIONS */
    char (*streams)[512];             /* [nstreams]: each partition's bus and redelivery stream */
    redisContext *c;                  /* single server: the sync connection (wk_redis); NULL on a cluster */
    cm_cluster *cc;                   /* wk_cluster: everything but the reads, routed by slot */
    bool cluster;                     /* REDIS_URL is redis-cluster:// */
    int *slot;                        /* [nstreams] each stream's slot */
    struct event_base *base;          /* the async reads' loop */
    wk_reader *readers;
    int nreaders;
    bool regroup;                     /* re-read the slot map and rebuild the readers ... */
    int64_t regroup_ms;               /* ... once this time has come */
    int64_t regroup_backoff_ms, last_regroup_ms;
    bool need_groups;                 /* NOGROUP seen: create the groups again */
    redisReply **arrived;             /* stream elements [name, entries] read, not yet handled */
    size_t narrived, caparrived;
    es_store *store;
    void *state;
    cm_argv *acks;                    /* [nstreams] ids handled, acknowledged with the next read */
    /* the batch in hand, for wk_touch */
    int cur_stream;
    const char **inflight;
    const redisReply *round;          /* the XREADGROUP reply being handled (every stream's entries) */
    size_t round_at;                  /* its element (stream) being handled now */
    size_t ninflight;
    int64_t batch_started_ms, last_touch_ms;
    char reason[256];                 /* why the current event failed */
    int retry_waiting;                /* own entries pending a retry */
    char (*claim_cursor)[64];         /* [nstreams] */
    char (*retry_cursor)[64];         /* [nstreams] where the retry scan of our pending list goes on */
    char budget_def[24];              /* RETRY_BUDGET_MS default of this worker, as text */
    int64_t last_ok_ms;               /* last successful Redis round trip (health) */
    int job_budget_ms;                /* a periodic job's share of a node (cluster: best effort); 0 off */
    /* metrics */
    cm_series *m_consumed[CM_EV_COUNT + 1], *m_latency[CM_EV_COUNT + 1], *m_errors[CM_EV_COUNT + 1];
    cm_series *m_skipped, *m_retries, *m_dead, *m_batches, *m_batch_entries, *m_batch_size, *m_lag,
        *m_pending, *m_claimed, *m_trimmed, *m_wait_short;
    cm_series **m_part_lag, **m_part_pending;   /* [PARTITIONS] when PARTITIONS > 1, else NULL */
};

extern volatile sig_atomic_t wk_stop_flag;

/* "redis: <why>" of a failed ctx->cc call into err; true (r freed) when r is
 * NULL or an error reply, false for a good reply the caller still owns. */
bool wk_reply_failed(wk_ctx *ctx, redisReply *r, char *err, size_t errlen);

/* Handles entries (an array reply of [id, fields] from `stream`), with their
 * delivery counts (NULL: all 1), acknowledging, scheduling retries or parking
 * each. Returns -1 when the connection broke (caller reconnects), else 0. */
int wk_process(wk_ctx *ctx, int stream, const redisReply *entries, const long long *deliveries);

/* Parks one entry in the dead-letter stream (and acks it). -1 on I/O error. */
int wk_park(wk_ctx *ctx, int stream, const redisReply *entry, const char *reason, long long attempts);

/* Retries own pending entries whose backoff elapsed (XPENDING + XCLAIM). */
int wk_retry_due(wk_ctx *ctx);
/* At start: takes back at once our own pending entries that were in flight
 * (delivered once, never failed) when the previous process with our consumer
 * name died; entries that had failed wait out their backoff in wk_retry_due. */
int wk_resume_own(wk_ctx *ctx);
/* Takes over entries idle longer than CLAIM_IDLE_MS (XAUTOCLAIM). */
int wk_claim_idle(wk_ctx *ctx);
/* Removes consumers idle for an hour that have nothing pending. */
int wk_prune_consumers(wk_ctx *ctx);
/* Backoff before retry number `deliveries` of entry id: exponential, capped,
 * with a deterministic jitter in [50%, 100%]. */
int64_t wk_backoff_ms(const wk_ctx *ctx, const char *id, long long deliveries);
/* True when entry id, after `failed` deliveries that did not succeed, has used
 * up RETRY_BUDGET_MS: the backoffs it waited (derived from the count) and the
 * wall time since the entry was written both reach the budget. */
bool wk_budget_spent(const wk_ctx *ctx, const char *id, long long failed);
/* True when a failure reason names Redis being unavailable (connection lost,
 * LOADING, BUSY, READONLY, MASTERDOWN, OOM, ...): retried without a budget. */
bool wk_reason_is_unavailable(const char *reason);

#endif
