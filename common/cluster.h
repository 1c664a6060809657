/* cluster.h - one Redis client for a single server and for Redis Cluster.
 *
 * A cm_cluster is opened on REDIS_URL. With redis-cluster://seed[,seed...]
 * it reads the slot map (CLUSTER SLOTS) from the first seed that answers,
 * keeps one sync hiredis connection per master it has talked to, and sends
 * each command to the master owning the command's slot. With redis:// or
 * unix: it is one node owning every slot (no CLUSTER SLOTS is sent), so
 * callers have one code path for both modes.
 *
 * Routing: the caller names the slot of each command (cm_key_slot of its
 * key, CM_SLOT_ANY for keyless ones); a script call is routed by its first
 * key and, on a cluster, refused before sending when its KEYS hash to
 * different slots (a single server takes any keys); a transaction goes as
 * one unit (cm_cluster_multi).
 * Redirections are followed transparently: MOVED updates the map (then the
 * whole map is re-read) and resends; ASK resends once to the named node
 * prefixed by ASKING. TRYAGAIN, CLUSTERDOWN, LOADING, a node that cannot be reached
 * or whose connection breaks are retried with capped exponential backoff
 * (10 ms doubling to 500 ms) until the retry deadline (cm_cluster_set_retry,
 * default 5 s), re-reading the map between tries so a promoted replica is
 * found. In best effort (cm_cluster_set_best_effort) a node that does not
 * answer within a short budget is given up and skipped instead.
 *
 * A command whose connection broke after it was written may have run: it is
 * sent again, so commands routed here must be safe to repeat (chorus writes
 * are: appends are idempotent by event id). Any other error reply is the
 * caller's to read.
 *
 * A blocking command (BLPOP, XREADGROUP BLOCK) must block for less than the
 * command timeout given to cm_cluster_open, or its timeout is taken for a
 * broken connection and the command is sent again.
 *
 * Not thread-safe: one cm_cluster per thread, like a redisContext. */
#ifndef CM_CLUSTER_H
#define CM_CLUSTER_H

#include "common/redis.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CM_CLUSTER_SLOTS 16384
#define CM_SLOT_ANY (-1)   /* a keyless command: any master answers it */

enum cm_cluster_err {
    CM_CLUSTER_OK = 0,
    CM_CLUSTER_EUNAVAIL = -1,   /* no answer within the retry deadline (I/O, CLUSTERDOWN, TRYAGAIN) */
    CM_CLUSTER_ECROSSSLOT = -2, /* a script's KEYS hash to different slots; nothing was sent */
    CM_CLUSTER_EARG = -3,       /* bad call: slot out of range, numkeys beyond the arguments */
};

typedef struct cm_cluster cm_cluster;

/* CRC16-CCITT (XMODEM: poly 0x1021, init 0), the Redis Cluster key hash. */
uint16_t cm_crc16(const char *buf, size_t len);

/* The cluster slot (0..16383) of a key: CRC16 of the hash tag (the bytes
 * between the first '{' and the first '}' after it, when not empty), else
 * of the whole key, mod 16384. */
int cm_key_slot(const char *key, size_t len);

/* cm_key_slot of argument i of a (CM_SLOT_ANY when there is none). */
int cm_argv_slot(const cm_argv *a, int i);

/* Opens a client on url (redis://, unix: or redis-cluster://) with a connect
 * and per-command timeout of timeout_ms. A single server is connected at
 * once; a cluster's slot map is read from the first seed that answers.
 * Returns the client (free with cm_cluster_free) or NULL with the reason in
 * err (never the password). */
cm_cluster *cm_cluster_open(const char *url, int timeout_ms, char *err, size_t errlen);

/* A single-server client over the caller's open connection c, which it
 * neither closes nor reopens (no retries: an I/O error is reported at once
 * and every later call on a broken c fails the same way). Lets code holding
 * a redisContext call functions written against cm_cluster. Free with
 * cm_cluster_free (c stays open). */
cm_cluster *cm_cluster_borrow(redisContext *c);

/* Closes every connection (not a borrowed one) and frees cc (NULL ok). */
void cm_cluster_free(cm_cluster *cc);

/* Sets how long one call keeps retrying transient failures (0: no retry;
 * redirections are still followed). A call may overrun it by one command
 * timeout. */
void cm_cluster_set_retry(cm_cluster *cc, int retry_ms);

/* Best effort, for periodic work that can wait for its next turn while a
 * master is down or frozen (the worker's jobs). With budget_ms > 0 a call
 * gives up on a node after budget_ms: its retry deadline, and each
 * command's I/O on an owned connection (connect, write, reply), are capped
 * by it, so a frozen master costs that much, not the retry deadline. A node
 * that gave up is skipped: the commands routed to it fail at once with
 * CM_CLUSTER_EUNAVAIL (nothing sent; in a pipeline the other nodes'
 * replies are kept) for the rest of the run (cm_cluster_skips_begin) and,
 * across runs, for a backoff of 50 ms doubling to 2 s while it keeps giving
 * up; any reply from it ends the backoff. budget_ms 0 turns it off: calls
 * keep the retry deadline and the open timeout again, and skip no node
 * (the run's skips are kept for when it is turned on again). */
void cm_cluster_set_best_effort(cm_cluster *cc, int budget_ms);

/* The best effort budget in force (0: off). */
int cm_cluster_best_effort(const cm_cluster *cc);

/* Starts a best effort run: no node has given up in it yet (the nodes
 * backing off stay skipped until their time). */
void cm_cluster_skips_begin(cm_cluster *cc);

/* How many nodes gave up or were skipped since cm_cluster_skips_begin;
 * their addresses ("host:port, ...") into what. */
int cm_cluster_skips(const cm_cluster *cc, char *what, size_t whatlen);

/* True when opened on a redis-cluster:// URL. */
bool cm_cluster_is_cluster(const cm_cluster *cc);

/* True when r, the reply of a call on cc (NULL cc: never connected), is
 * NULL or an error reply: then the reason goes into err ("redis: " and the
 * error reply, or cc's failure) and r is freed. False: r is the caller's. */
bool cm_cluster_reply_failed(const cm_cluster *cc, redisReply *r, char *err, size_t errlen);

/* The error of the last failed call (a cm_cluster_err) and its text. */
int cm_cluster_err(const cm_cluster *cc);
const char *cm_cluster_errstr(const cm_cluster *cc);

/* Re-reads the slot map now (a no-op for a single server). Returns 0, or
 * CM_CLUSTER_EUNAVAIL when no known node answered (the old map is kept). */
int cm_cluster_refresh(cm_cluster *cc) __attribute__((warn_unused_result));

/* Fills out with the address and credentials of the master currently
 * believed to own slot (CM_SLOT_ANY: any master), for a caller opening its
 * own connection (e.g. libevent async). Returns 0 or CM_CLUSTER_EARG when
 * the slot is out of range or has no known owner. */
int cm_cluster_slot_addr(const cm_cluster *cc, int slot, cm_redis_url *out)
    __attribute__((warn_unused_result));

/* Fills slot[0..n) with one slot per master (the lowest it owns), so a
 * caller can send a keyless command to every master (slot 0 alone for a
 * single server). Returns n (at most max). */
int cm_cluster_master_slots(const cm_cluster *cc, int *slot, int max);

/* Sends a (keys and args as in a) to slot's master. Returns the reply
 * (caller frees; may be an error reply other than a redirection), or NULL
 * with cm_cluster_err/errstr set. */
redisReply *cm_cluster_argv(cm_cluster *cc, int slot, const cm_argv *a);

/* As cm_cluster_argv, with a redisCommand-style format. */
redisReply *cm_cluster_command(cm_cluster *cc, int slot, const char *fmt, ...);

/* EVALSHA s with numkeys keys first in a, on the master of KEYS[1]'s slot
 * (any master with no keys); loads the script there on first use and resends
 * it by source on NOSCRIPT. Returns as cm_cluster_argv; NULL with
 * CM_CLUSTER_ECROSSSLOT (nothing sent) when the keys span slots. */
redisReply *cm_cluster_script(cm_cluster *cc, cm_script *s, int numkeys, const cm_argv *a);

/* MULTI, cmds[0..n), EXEC as one unit on slot's master (every command's
 * keys must be in that slot). When any part is redirected or hits a
 * transient error, the whole transaction is sent again, never a part of it
 * alone. Returns EXEC's reply (caller frees: an array of the commands'
 * replies, or an error such as EXECABORT), or NULL with cm_cluster_err set.
 * MULTI, EXEC, DISCARD, WATCH and UNWATCH given to the other calls abort:
 * their parts could be redirected one by one. */
redisReply *cm_cluster_multi(cm_cluster *cc, int slot, const cm_argv *cmds, int n);

/* A pipeline: commands queued, then sent with one write per node and read
 * back, each reply at its command's index whatever node answered it. */
typedef struct cm_pipe cm_pipe;

/* A new empty pipeline on cc (borrowed; must outlive it). Free with
 * cm_pipe_free. */
cm_pipe *cm_pipe_new(cm_cluster *cc);

/* Frees p and every reply not taken (NULL ok). */
void cm_pipe_free(cm_pipe *p);

/* Empties p (frees untaken replies) for reuse. */
void cm_pipe_reset(cm_pipe *p);

/* Queues one command for slot; a is copied. */
void cm_pipe_argv(cm_pipe *p, int slot, const cm_argv *a);
void cm_pipe_command(cm_pipe *p, int slot, const char *fmt, ...);

/* Queues a transaction (as cm_cluster_multi); its reply is EXEC's. */
void cm_pipe_multi(cm_pipe *p, int slot, const cm_argv *cmds, int n);

/* Queues a script call (as cm_cluster_script). Returns 0, or
 * CM_CLUSTER_ECROSSSLOT / CM_CLUSTER_EARG with cm_cluster_errstr set and
 * nothing queued. */
int cm_pipe_script(cm_pipe *p, cm_script *s, int numkeys, const cm_argv *a)
    __attribute__((warn_unused_result));

/* Number of queued commands. */
size_t cm_pipe_count(const cm_pipe *p);

/* The slot command i was queued for (CM_SLOT_ANY: keyless; -1 when i is
 * out of range). */
int cm_pipe_slot(const cm_pipe *p, size_t i);

/* Sends every queued command and collects the replies, following
 * redirections per reply and retrying transient failures as a single call
 * does. Returns 0 when every command has a reply (some may be error
 * replies), or CM_CLUSTER_EUNAVAIL (cm_cluster_errstr says why) when the
 * deadline passed first: the replies that came are kept, the others NULL. */
int cm_pipe_exec(cm_pipe *p) __attribute__((warn_unused_result));

/* cm_pipe_exec with best effort off for this call: for commands that block
 * on purpose, such as WAIT, which a best-effort budget would cut short (and
 * a WAIT resent on a new connection confirms nothing written before). */
int cm_pipe_exec_blocking(cm_pipe *p) __attribute__((warn_unused_result));

/* The node that gave command i its final reply after cm_pipe_exec (the
 * same number for two commands one master answered), or -1 when it has
 * none. A keyless command (WAIT) is never redirected: comparing nodes tells
 * whether it reached the master its keyed commands ended up on. */
int cm_pipe_node(const cm_pipe *p, size_t i);

/* Reply i after cm_pipe_exec, handed to the caller (who frees it); NULL if
 * it has none or was taken already. */
redisReply *cm_pipe_take(cm_pipe *p, size_t i);

#endif
