/* redis.h - Redis connection helpers over hiredis 0.14 (RESP2, sync API).
 *
 * REDIS_URL forms: redis://[[user]:password@]host[:port][/db],
 * unix:/path/to/sock[?db=N] (also unix:///path), and for Redis Cluster
 * redis-cluster://[[user]:password@]host[:port][,host[:port]...] (seed nodes;
 * a cluster has db 0 only). A cluster URL is served by cm_cluster
 * (common/cluster.h); cm_redis_connect refuses it.
 *
 * Secrets never leave the process: every message that names a URL names it
 * through cm_redis_url_mask, which keeps the user and hides the password. */
#ifndef CM_REDIS_H
#define CM_REDIS_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CM_REDIS_MAX_SEEDS 16

typedef struct cm_redis_seed {
    char host[256];
    int port;
} cm_redis_seed;

typedef struct cm_redis_url {
    char host[256];      /* empty for unix sockets; the first seed of a cluster URL */
    int port;
    char path[256];      /* unix socket path, empty for TCP */
    char user[128];      /* ACL user, empty for the default user (AUTH <password>) */
    char password[256];  /* empty when none */
    int db;
    bool cluster;        /* redis-cluster://: seeds[] lists the nodes to ask for the slot map */
    int nseeds;          /* cluster URLs: 1..CM_REDIS_MAX_SEEDS; 0 otherwise */
    cm_redis_seed seeds[CM_REDIS_MAX_SEEDS];
} cm_redis_url;

/* Parses url into out. Returns 0, or -1 with the reason in err. */
int cm_redis_url_parse(const char *url, cm_redis_url *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Writes url into out with its password replaced by "***"
 * ("redis://app:***@host:6379/0", "redis://:***@host"); a URL without
 * credentials is copied as is. Works on any "scheme://userinfo@..." text,
 * parsed or not, so an invalid URL is reported masked too. Truncates to
 * outlen (always NUL-terminated); NULL url gives "". */
void cm_redis_url_mask(const char *url, char *out, size_t outlen);

/* What a failed Redis call means for the caller (cm_redis_fault_of). */
typedef enum cm_redis_fault {
    CM_REDIS_OK,           /* a usable reply */
    CM_REDIS_UNREACHABLE,  /* no answer: I/O error, timeout, refused, closed; or
                              LOADING / BUSY / MASTERDOWN (cannot serve now) */
    CM_REDIS_TRANSIENT,    /* answered, but a retry may succeed: CLUSTERDOWN,
                              TRYAGAIN, NOSCRIPT, READONLY, OOM, MISCONF,
                              NOREPLICAS, MOVED/ASK, EXECABORT */
    CM_REDIS_PERMANENT,    /* a retry cannot fix it: WRONGTYPE, a Lua runtime
                              error, any other error reply */
} cm_redis_fault;

/* Classifies reply r (NULL: none came) of a command on c (may be NULL when r
 * is not): the one place that decides between "Redis unavailable" (503,
 * retryable) and a permanent failure (500). Does not free r. */
cm_redis_fault cm_redis_fault_of(const redisContext *c, const redisReply *r);
/* The same for an error reply's text already copied out (n bytes of s,
 * optionally prefixed "redis: " as cm_reply_failed writes it). */
cm_redis_fault cm_redis_fault_of_error(const char *s, size_t n);

/* Connects with a connect and command timeout of timeout_ms, authenticates and
 * selects the db. Returns a context the caller frees with redisFree, or NULL
 * with the reason (naming the address, never the password) in err. A
 * redis-cluster:// URL is refused: use cm_cluster_open. */
redisContext *cm_redis_connect(const char *url, int timeout_ms, char *err, size_t errlen);

/* As cm_redis_connect, for a parsed URL's host/port or path (u->cluster and
 * the seeds are ignored: this connects to exactly that one server). */
redisContext *cm_redis_connect_url(const cm_redis_url *u, int timeout_ms, char *err, size_t errlen);

/* Frees r (NULL ok). Returns true if r is NULL or an error reply, copying the
 * message (or the context's errstr) into err; false for a good reply, which the
 * caller still owns. Use as: if (cm_reply_failed(c, r, err, len)) goto fail; */
bool cm_reply_failed(const redisContext *c, redisReply *r, char *err, size_t errlen);
/* The same with the text to give when there is no reply (cm_cluster's
 * cm_cluster_reply_failed passes its client's error). */
bool cm_reply_failed_as(const char *no_reply, redisReply *r, char *err, size_t errlen);

/* An argument vector for redisCommandArgv / redisAppendCommandArgv.
 * Arguments are copied; cm_argv_free releases them. */
typedef struct cm_argv {
    char **v;
    size_t *len;
    int n, cap;
} cm_argv;

void cm_argv_add(cm_argv *a, const char *s, size_t n);
void cm_argv_adds(cm_argv *a, const char *s);
void cm_argv_addf(cm_argv *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cm_argv_addll(cm_argv *a, long long v);
void cm_argv_reset(cm_argv *a);   /* n = 0, keeps capacity */
void cm_argv_free(cm_argv *a);

/* A Lua script embedded at build time, loaded once and called by SHA. */
typedef struct cm_script {
    const char *src;  /* borrowed, static */
    char sha[41];     /* filled by cm_script_load; empty until then */
    bool stale;       /* Redis said NOSCRIPT: next call sends the source */
} cm_script;

/* SCRIPT LOADs s on c. Returns 0 or -1 with err. */
int cm_script_load(redisContext *c, cm_script *s, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* EVALSHA with argv = [keys..., args...] (numkeys first keys of a). Loads the
 * script on first use (no SHA yet) and reloads it once on NOSCRIPT (Redis
 * restarted and lost its cache). Returns the
 * reply (caller frees; may be an error reply) or NULL on I/O error. */
redisReply *cm_script_call(redisContext *c, cm_script *s, int numkeys, const cm_argv *a);

/* Appends the EVALSHA to c's output buffer without waiting (pipelining);
 * read with cm_script_reply. */
void cm_script_append(redisContext *c, cm_script *s, int numkeys, const cm_argv *a);
/* Reads the reply of one appended call (caller frees; NULL on I/O error). A
 * NOSCRIPT error is returned as is (treat it as transient and retry): the
 * script is marked stale so the next append sends its source, re-caching it. */
redisReply *cm_script_reply(redisContext *c, cm_script *s);

/* Small reply accessors that never crash on a foreign shape. */
const redisReply *cm_reply_elem(const redisReply *r, size_t i);   /* NULL if absent */
bool cm_reply_is_str(const redisReply *r);                        /* STRING or STATUS */
long long cm_reply_ll(const redisReply *r, long long dflt);        /* INTEGER or numeric string */

#endif
