/* cluster_run.c - running commands, scripts, transactions and pipelines
 * over the slot map (cluster.c).
 *
 * Every call, single or pipelined, goes through run(): a list of requests,
 * each formatted once (RESP) when queued. One round appends every pending
 * request to its node's output buffer (prefixed by ASKING when an ASK sent
 * it there), then reads each node's replies in the order they were
 * appended, so a reply always lands at its own request whatever node
 * answered. A reply is final unless it is a redirection (MOVED: fix the map,
 * re-read it before the next round; ASK: next round goes to that node once,
 * behind ASKING),
 * NOSCRIPT (next round sends the source), or transient (TRYAGAIN,
 * CLUSTERDOWN, LOADING, an I/O error: the connection is dropped and the map
 * re-read). Rounds repeat until nothing is pending; a round that left
 * something transient sleeps first (capped exponential backoff), and the
 * call gives up at the retry deadline with CM_CLUSTER_EUNAVAIL.
 *
 * Script calls are queued as the RESP body "numkeys key... arg..." without
 * its array header; each send writes a header naming EVALSHA <sha> or EVAL
 * <source> in front of the same body, so a NOSCRIPT retry reformats nothing.
 * The SHA is learned by one SCRIPT LOAD at the start of a round, before
 * anything is appended to that connection (a sync command there would read
 * a pipelined request's reply). */
#include "common/cluster_int.h"
#include "common/clock.h"
#include "common/xmalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
    BACKOFF_MIN_MS = 10,
    BACKOFF_MAX_MS = 500,
    FREE_REDIRECTS = 5,   /* redirections of one request before rounds back off */
};

typedef struct creq {
    char *cmd;              /* formatted by hiredis (redisFreeCommand) */
    size_t off, len;        /* what to send: cmd[off..off+len) (the body, for a script) */
    cm_script *script;      /* borrowed; NULL for a plain command */
    int argc;               /* script: arguments after EVALSHA <sha> (numkeys + keys + args) */
    int slot;               /* 0..16383 or CM_SLOT_ANY */
    int next;               /* node for the next send only (a redirection); -1: by the map */
    bool next_asking;       /* that send is prefixed by ASKING (an ASK redirection) */
    int node;               /* node written to this round; -1 none */
    int answered;           /* node the final reply came from; -1 none yet */
    bool asking;            /* an ASKING precedes it this round */
    bool by_src;            /* send EVAL <source> (after NOSCRIPT) */
    int nreplies;           /* replies it gets: 1, or n + 2 for MULTI + n commands + EXEC */
    int redirects;
    redisReply *reply;      /* the final reply once done */
    bool done;
    bool skipped;           /* best effort: its node gave up in this run; no reply */
    int fault;              /* the node that last failed it (I/O, TRYAGAIN, CLUSTERDOWN,
                             * LOADING); -1 when its last try failed for no node's fault */
} creq;

struct cm_pipe {
    cm_cluster *cc;
    creq *q;
    size_t n, cap;
};

/* ---- requests ---------------------------------------------------------- */

/* Aborts on MULTI, EXEC, DISCARD or WATCH sent as a plain command: its
 * parts could be redirected one by one, out of the transaction. */
static void refuse_transaction_verb(const char *cmd)
{
    static const char *const verbs[] = {"MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH"};
    const char *name = strchr(cmd, '\n');   /* "*N\r\n$len\r\nNAME\r\n" */
    name = name ? strchr(name + 1, '\n') : NULL;
    if (!name)
        return;
    name++;
    size_t n = strcspn(name, "\r");
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
        if (n == strlen(verbs[i]) && !strncasecmp(name, verbs[i], n)) {
            fprintf(stderr, "cm_cluster: %s sent as a plain command; use cm_cluster_multi / cm_pipe_multi\n",
                    verbs[i]);
            abort();
        }
    }
}

/* A plain command from an argument vector. */
static void req_argv(creq *q, int slot, const cm_argv *a)
{
    memset(q, 0, sizeof *q);
    int n = redisFormatCommandArgv(&q->cmd, a->n, (const char **)a->v, a->len);
    if (n < 0) {
        fprintf(stderr, "cm_cluster: out of memory formatting a command\n");
        abort();
    }
    refuse_transaction_verb(q->cmd);
    q->len = (size_t)n;
    q->slot = slot;
    q->nreplies = 1;
    q->next = q->node = q->answered = -1;
}

/* MULTI, the n commands of cmds, EXEC: one request, resent as a whole. */
static void req_multi(creq *q, int slot, const cm_argv *cmds, int n)
{
    static const char multi[] = "*1\r\n$5\r\nMULTI\r\n", exec[] = "*1\r\n$4\r\nEXEC\r\n";
    memset(q, 0, sizeof *q);
    char **part = cm_xmalloc(sizeof *part * (size_t)(n ? n : 1));
    size_t total = sizeof multi - 1 + sizeof exec - 1;
    int *plen = cm_xmalloc(sizeof *plen * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) {
        plen[i] = redisFormatCommandArgv(&part[i], cmds[i].n, (const char **)cmds[i].v, cmds[i].len);
        if (plen[i] < 0) {
            fprintf(stderr, "cm_cluster: out of memory formatting a command\n");
            abort();
        }
        refuse_transaction_verb(part[i]);
        total += (size_t)plen[i];
    }
    /* One buffer that redisFreeCommand (free) releases like the others. */
    q->cmd = cm_xmalloc(total + 1);
    size_t off = 0;
    memcpy(q->cmd, multi, sizeof multi - 1);
    off += sizeof multi - 1;
    for (int i = 0; i < n; i++) {
        memcpy(q->cmd + off, part[i], (size_t)plen[i]);
        off += (size_t)plen[i];
        redisFreeCommand(part[i]);
    }
    memcpy(q->cmd + off, exec, sizeof exec - 1);
    q->cmd[total] = '\0';
    free(part);
    free(plen);
    q->len = total;
    q->slot = slot;
    q->nreplies = n + 2;
    q->next = q->node = q->answered = -1;
}

/* A plain command from a redisCommand-style format (a bad format is a
 * programming error: abort). */
static void req_vformat(creq *q, int slot, const char *fmt, va_list ap)
{
    memset(q, 0, sizeof *q);
    int n = redisvFormatCommand(&q->cmd, fmt, ap);
    if (n < 0) {
        fprintf(stderr, "cm_cluster: cannot format command \"%s\"\n", fmt);
        abort();
    }
    refuse_transaction_verb(q->cmd);
    q->len = (size_t)n;
    q->slot = slot;
    q->nreplies = 1;
    q->next = q->node = q->answered = -1;
}

/* The slot of a script call: that of KEYS[1], the same for every key.
 * Returns 0 or a cm_cluster_err with errstr set. */
static int script_slot(cm_cluster *cc, int numkeys, const cm_argv *a, int *slot)
{
    if (numkeys < 0 || numkeys > a->n) {
        cm_cluster_set_err(cc, CM_CLUSTER_EARG, "script call: numkeys %d but %d arguments", numkeys, a->n);
        return CM_CLUSTER_EARG;
    }
    *slot = numkeys ? cm_argv_slot(a, 0) : CM_SLOT_ANY;
    if (!cc->url.cluster)
        return 0;   /* one server holds every key */
    for (int k = 1; k < numkeys; k++) {
        int sk = cm_argv_slot(a, k);
        if (sk != *slot) {
            cm_cluster_set_err(
                cc, CM_CLUSTER_ECROSSSLOT,
                "script keys span hash slots: KEYS[1] \"%.*s\" is in slot %d but KEYS[%d] \"%.*s\" "
                "in slot %d (give every key of one call the same {hash tag}); nothing was sent",
                (int)(a->len[0] > 64 ? 64 : a->len[0]), a->v[0], *slot, k + 1,
                (int)(a->len[k] > 64 ? 64 : a->len[k]), a->v[k], sk);
            return CM_CLUSTER_ECROSSSLOT;
        }
    }
    return 0;
}

/* A script call: the body "numkeys keys... args..." formatted once. */
static int req_script(cm_cluster *cc, creq *q, cm_script *s, int numkeys, const cm_argv *a)
{
    int slot;
    int rc = script_slot(cc, numkeys, a, &slot);
    if (rc != 0)
        return rc;
    memset(q, 0, sizeof *q);
    enum { STACK = 64 };
    const char *sv[STACK];
    size_t sl[STACK];
    int argc = a->n + 1;
    const char **v = argc <= STACK ? sv : cm_xmalloc(sizeof *v * (size_t)argc);
    size_t *l = argc <= STACK ? sl : cm_xmalloc(sizeof *l * (size_t)argc);
    char nk[16];
    v[0] = nk;
    l[0] = (size_t)snprintf(nk, sizeof nk, "%d", numkeys);
    for (int i = 0; i < a->n; i++) {
        v[i + 1] = a->v[i];
        l[i + 1] = a->len[i];
    }
    int n = redisFormatCommandArgv(&q->cmd, argc, v, l);
    if (v != sv) {
        free(v);
        free(l);
    }
    if (n < 0) {
        fprintf(stderr, "cm_cluster: out of memory formatting a script call\n");
        abort();
    }
    /* Skip the "*<argc>\r\n" array header: send() writes its own. */
    const char *body = strchr(q->cmd, '\n') + 1;
    q->off = (size_t)(body - q->cmd);
    q->len = (size_t)n - q->off;
    q->script = s;
    q->argc = argc;
    q->slot = slot;
    q->nreplies = 1;
    q->next = q->node = q->answered = -1;
    return 0;
}

static void req_clear(creq *q)
{
    if (q->cmd)
        redisFreeCommand(q->cmd);
    if (q->reply)
        freeReplyObject(q->reply);
    q->cmd = NULL;
    q->reply = NULL;
}

/* Appends q to c's output buffer (no I/O). A script gets its header,
 * EVALSHA <sha> or EVAL <source>, in front of its body. */
static void append(redisContext *c, creq *q)
{
    static const char asking[] = "*1\r\n$6\r\nASKING\r\n";
    if (q->asking)
        redisAppendFormattedCommand(c, asking, sizeof asking - 1);
    if (q->script) {
        cm_script *s = q->script;
        char head[96];
        if (q->by_src || !s->sha[0]) {
            size_t srclen = strlen(s->src);
            int hn = snprintf(head, sizeof head, "*%d\r\n$4\r\nEVAL\r\n$%zu\r\n", q->argc + 2, srclen);
            redisAppendFormattedCommand(c, head, (size_t)hn);
            redisAppendFormattedCommand(c, s->src, srclen);
            redisAppendFormattedCommand(c, "\r\n", 2);
        } else {
            int hn =
                snprintf(head, sizeof head, "*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n", q->argc + 2, s->sha);
            redisAppendFormattedCommand(c, head, (size_t)hn);
        }
    }
    redisAppendFormattedCommand(c, q->cmd + q->off, q->len);
}

/* ---- replies ----------------------------------------------------------- */

/* True if r is an error reply whose code (first word) is `code`. */
static bool err_is(const redisReply *r, const char *code)
{
    size_t n = strlen(code);
    return r->type == REDIS_REPLY_ERROR && r->len >= n && !strncmp(r->str, code, n) &&
           (r->len == n || r->str[n] == ' ');
}

/* Parses "MOVED|ASK <slot> <host>:<port>" into *slot and the target node
 * (an empty or "?" host means the node that answered, `from`); returns the
 * node, or -1 if r is not of that shape. */
static int redirect_target(cm_cluster *cc, const redisReply *r, int from, int *slot)
{
    const char *sp = memchr(r->str, ' ', r->len);
    const char *addr = sp ? memchr(sp + 1, ' ', r->len - (size_t)(sp + 1 - r->str)) : NULL;
    if (!addr)
        return -1;
    char *send;
    long sl = strtol(sp + 1, &send, 10);
    if (send != addr || sl < 0 || sl >= CM_CLUSTER_SLOTS)
        return -1;
    *slot = (int)sl;
    addr++;
    const char *end = r->str + r->len;
    const char *colon = NULL;
    for (const char *p = addr; p < end; p++)
        if (*p == ':')
            colon = p;
    if (!colon)
        return -1;
    char *pend;
    long port = strtol(colon + 1, &pend, 10);
    if (pend != end || port < 1 || port > 65535)
        return -1;
    size_t hl = (size_t)(colon - addr);
    if (hl == 0 || (hl == 1 && *addr == '?')) {
        char host[256];
        snprintf(host, sizeof host, "%s", cc->nodes[from].host);
        return cm_cluster_node_get(cc, host, strlen(host), (int)port);
    }
    return cm_cluster_node_get(cc, addr, hl, (int)port);
}

/* Decides what reply r (read from node `from`) means for q. Takes r.
 * Returns true when q must wait for a backoff before its next try. */
static bool handle_reply(cm_cluster *cc, creq *q, redisReply *r, int from)
{
    q->fault = -1;   /* it answered; only the transient errors below are its fault */
    if (r->type != REDIS_REPLY_ERROR) {
        q->reply = r;
        q->done = true;
        return false;
    }
    bool moved = err_is(r, "MOVED"), ask = !moved && err_is(r, "ASK");
    if (moved || ask) {
        int slot;
        int to = redirect_target(cc, r, from, &slot);
        if (to < 0) {   /* unreadable redirection: the caller sees it */
            q->reply = r;
            q->done = true;
            return false;
        }
        if (moved) {
            cc->owner[slot] = (int16_t)to;
            cc->map_stale = true;   /* usually more than one slot moved */
        }
        /* Straight there next time; by the map only if the caller's slot is
         * the one that moved (a keyless or mis-slotted call is not). */
        if (ask || slot != q->slot) {
            q->next = to;
            q->next_asking = ask;
        }
        freeReplyObject(r);
        return ++q->redirects > FREE_REDIRECTS;
    }
    if (q->script && err_is(r, "NOSCRIPT")) {
        q->by_src = true;
        freeReplyObject(r);
        return false;
    }
    if (err_is(r, "TRYAGAIN") || err_is(r, "CLUSTERDOWN") || err_is(r, "LOADING")) {
        cm_cluster_set_err(cc, CM_CLUSTER_EUNAVAIL, "Redis at %s:%d: %.*s", cc->nodes[from].host,
                           cc->nodes[from].port, (int)r->len, r->str);
        if (err_is(r, "CLUSTERDOWN"))
            cc->map_stale = true;
        q->fault = from;
        freeReplyObject(r);
        return true;
    }
    q->reply = r;
    q->done = true;
    return false;
}

/* ---- the round loop ---------------------------------------------------- */

/* Loads the SHA of every pending script not loaded yet on the node it is
 * about to go to. Runs before anything of the round is appended. */
static void load_scripts(cm_cluster *cc, creq *q, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (q[i].done || q[i].skipped || !q[i].script || q[i].script->sha[0] || q[i].by_src)
            continue;
        int to = q[i].next >= 0 ? q[i].next : cm_cluster_route(cc, q[i].slot);
        redisContext *c = to >= 0 ? cm_cluster_node_conn(cc, to) : NULL;
        char err[256];
        if (c && cm_script_load(c, q[i].script, err, sizeof err) != 0 && c->err)
            cm_cluster_node_drop(cc, to);   /* a failed load otherwise leaves the call to send its source */
    }
}

/* Appends every pending request to its node. Returns true if some could
 * not be sent (no owner known, node unreachable). */
static bool send_round(cm_cluster *cc, creq *q, size_t n)
{
    bool wait = false;
    for (size_t i = 0; i < n; i++) {
        if (q[i].done || q[i].skipped)
            continue;
        int to = q[i].next >= 0 ? q[i].next : cm_cluster_route(cc, q[i].slot);
        q[i].asking = q[i].next >= 0 && q[i].next_asking;
        q[i].next = -1;
        q[i].next_asking = false;
        q[i].node = -1;
        if (to < 0) {
            cm_cluster_set_err(cc, CM_CLUSTER_EUNAVAIL, "no node is known to serve slot %d", q[i].slot);
            cc->map_stale = true;
            wait = true;
            continue;
        }
        redisContext *c = cm_cluster_node_conn(cc, to);
        if (!c) {
            cc->map_stale = cc->url.cluster;
            q[i].fault = to;
            wait = true;
            continue;
        }
        if (q[i].script && q[i].script->stale) {   /* NOSCRIPT seen by a cm_script_* call */
            q[i].by_src = true;
            q[i].script->stale = false;
        }
        append(c, &q[i]);
        q[i].node = to;
    }
    return wait;
}

/* Writes every node's output buffer before any reply is read, so the
 * nodes work on their shares at the same time (hiredis would write a
 * node's buffer only at its first read, after the previous node's replies).
 * A failed write leaves the context in error: read_node drops it. */
static void flush_all(cm_cluster *cc)
{
    for (int k = 0; k < cc->nnodes; k++) {
        redisContext *c = cc->nodes[k].c;
        int done = 0;
        while (c && !c->err && !done)
            if (redisBufferWrite(c, &done) != REDIS_OK)
                break;
    }
}

/* True for a reply that handle_reply would not hand to the caller. */
static bool redirect_or_transient(const redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR &&
           (err_is(r, "MOVED") || err_is(r, "ASK") || err_is(r, "TRYAGAIN") || err_is(r, "CLUSTERDOWN") ||
            err_is(r, "LOADING"));
}

/* Reads the replies of one request q from node k: its ASKING's, then
 * nreplies. A transaction's reply is EXEC's, unless one of its commands was
 * redirected or refused for a transient reason (EXEC then answers
 * EXECABORT): that reply decides, and the whole transaction is resent.
 * Returns false if the connection failed (q is left pending). */
static bool read_request(cm_cluster *cc, creq *q, int k, redisReply **out)
{
    redisContext *c = cc->nodes[k].c;
    redisReply *r = NULL, *decide = NULL;
    *out = NULL;
    if (q->asking) {
        if (redisGetReply(c, (void **)&r) != REDIS_OK || !r)
            return false;
        freeReplyObject(r);   /* +OK */
    }
    for (int j = 0; j < q->nreplies; j++) {
        r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK || !r) {
            if (decide)
                freeReplyObject(decide);
            return false;
        }
        if (j == q->nreplies - 1)
            break;
        if (!decide && redirect_or_transient(r))
            decide = r;
        else
            freeReplyObject(r);
    }
    if (decide) {
        freeReplyObject(r);
        r = decide;
    }
    *out = r;
    return true;
}

/* Reads node k's replies in the order its requests were appended. Returns
 * true if some request must back off. */
static bool read_node(cm_cluster *cc, creq *q, size_t n, int k)
{
    bool wait = false;
    for (size_t i = 0; i < n; i++) {
        if (q[i].done || q[i].node != k)
            continue;
        q[i].node = -1;
        redisReply *r;
        if (!cc->nodes[k].c || !read_request(cc, &q[i], k, &r)) {
            cm_cluster_node_drop(cc, k);   /* the rest of k's requests are resent next round */
            q[i].fault = k;
            wait = true;
            continue;
        }
        wait |= handle_reply(cc, &q[i], r, k);
        if (q[i].done) {
            q[i].answered = k;
            cc->nodes[k].backoff_ms = 0;   /* a final answer: best effort stops skipping it */
            cc->nodes[k].skip_until_ms = 0;
        }
    }
    return wait;
}

/* The node q goes to next: a redirection's, else its slot's owner (-1:
 * none known). */
static int target(const cm_cluster *cc, const creq *q)
{
    return q->next >= 0 ? q->next : cm_cluster_route(cc, q->slot);
}

/* Best effort: gives up at once every pending request whose node is
 * skipped (gave up earlier in this run, or backing off). */
static void skip_round(cm_cluster *cc, creq *q, size_t n)
{
    for (size_t i = 0; cc->budget_ms > 0 && i < n; i++) {
        if (q[i].done || q[i].skipped)
            continue;
        int to = target(cc, &q[i]);
        if (to >= 0 && cm_cluster_node_skipped(cc, to)) {
            q[i].skipped = true;
            cm_cluster_node_note_skip(cc, to);
        }
    }
}

/* Runs requests q[0..n) to completion or the retry deadline (see top). In
 * best effort the deadline is the budget, the nodes of the requests still
 * pending then give up, and requests for a node that gave up are not sent:
 * the call fails with CM_CLUSTER_EUNAVAIL, the others' replies kept. */
static int run(cm_cluster *cc, creq *q, size_t n)
{
    int limit = cc->budget_ms > 0 && cc->budget_ms < cc->retry_ms ? cc->budget_ms : cc->retry_ms;
    int64_t deadline = cm_mono_ms() + limit;
    int backoff = BACKOFF_MIN_MS;
    cc->err = 0;
    cc->errstr[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        q[i].skipped = false;
        q[i].fault = -1;
    }
    for (;;) {
        if (cc->map_stale)
            cm_cluster_reload(cc);   /* on failure the old map still routes, and map_stale stays */
        skip_round(cc, q, n);
        load_scripts(cc, q, n);
        bool wait = send_round(cc, q, n);
        flush_all(cc);
        for (int k = 0; k < cc->nnodes; k++)
            wait |= read_node(cc, q, n, k);
        size_t left = 0, skipped = 0;
        for (size_t i = 0; i < n; i++) {
            left += !q[i].done && !q[i].skipped;
            skipped += q[i].skipped;
        }
        if (!left && !skipped) {
            cc->err = 0;
            return 0;
        }
        if (!left) {
            cm_cluster_set_err(cc, CM_CLUSTER_EUNAVAIL, "Redis at %s: skipped, it did not answer within %d ms",
                               cc->skipped, cc->budget_ms);
            return CM_CLUSTER_EUNAVAIL;
        }
        if (!wait)
            continue;
        int64_t now = cm_mono_ms();
        if (now >= deadline) {
            /* give up the nodes that failed a pending request, not those it
             * was redirected to or that asked for a script's source */
            for (size_t i = 0; cc->budget_ms > 0 && i < n; i++)
                if (!q[i].done && !q[i].skipped && q[i].fault >= 0)
                    cm_cluster_node_give_up(cc, q[i].fault);
            if (!cc->errstr[0])
                cm_cluster_set_err(cc, CM_CLUSTER_EUNAVAIL, "no answer within %d ms", limit);
            cc->err = CM_CLUSTER_EUNAVAIL;
            return CM_CLUSTER_EUNAVAIL;
        }
        cm_sleep_ms(backoff < deadline - now ? backoff : deadline - now);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
}

/* Runs one request and hands its reply to the caller. */
static redisReply *run_one(cm_cluster *cc, creq *q)
{
    redisReply *r = NULL;
    if (run(cc, q, 1) == 0) {
        r = q->reply;
        q->reply = NULL;
    }
    req_clear(q);
    return r;
}

static bool slot_ok(cm_cluster *cc, int slot)
{
    if (slot >= CM_SLOT_ANY && slot < CM_CLUSTER_SLOTS)
        return true;
    cm_cluster_set_err(cc, CM_CLUSTER_EARG, "slot %d out of range", slot);
    return false;
}

redisReply *cm_cluster_argv(cm_cluster *cc, int slot, const cm_argv *a)
{
    if (!slot_ok(cc, slot))
        return NULL;
    creq q;
    req_argv(&q, slot, a);
    return run_one(cc, &q);
}

redisReply *cm_cluster_command(cm_cluster *cc, int slot, const char *fmt, ...)
{
    if (!slot_ok(cc, slot))
        return NULL;
    creq q;
    va_list ap;
    va_start(ap, fmt);
    req_vformat(&q, slot, fmt, ap);
    va_end(ap);
    return run_one(cc, &q);
}

redisReply *cm_cluster_script(cm_cluster *cc, cm_script *s, int numkeys, const cm_argv *a)
{
    creq q;
    if (req_script(cc, &q, s, numkeys, a) != 0)
        return NULL;
    return run_one(cc, &q);
}

redisReply *cm_cluster_multi(cm_cluster *cc, int slot, const cm_argv *cmds, int n)
{
    if (!slot_ok(cc, slot))
        return NULL;
    if (n < 0) {
        cm_cluster_set_err(cc, CM_CLUSTER_EARG, "cm_cluster_multi: %d commands", n);
        return NULL;
    }
    creq q;
    req_multi(&q, slot, cmds, n);
    return run_one(cc, &q);
}

/* ---- pipelines --------------------------------------------------------- */

cm_pipe *cm_pipe_new(cm_cluster *cc)
{
    cm_pipe *p = cm_xcalloc(1, sizeof *p);
    p->cc = cc;
    return p;
}

void cm_pipe_reset(cm_pipe *p)
{
    for (size_t i = 0; i < p->n; i++)
        req_clear(&p->q[i]);
    p->n = 0;
}

void cm_pipe_free(cm_pipe *p)
{
    if (!p)
        return;
    cm_pipe_reset(p);
    free(p->q);
    free(p);
}

/* The next free request slot of p. */
static creq *pipe_slot(cm_pipe *p)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        p->q = cm_xrealloc(p->q, sizeof *p->q * p->cap);
    }
    return &p->q[p->n];
}

void cm_pipe_argv(cm_pipe *p, int slot, const cm_argv *a)
{
    if (slot < CM_SLOT_ANY || slot >= CM_CLUSTER_SLOTS) {
        fprintf(stderr, "cm_pipe_argv: slot %d out of range\n", slot);
        abort();
    }
    req_argv(pipe_slot(p), slot, a);
    p->n++;
}

void cm_pipe_command(cm_pipe *p, int slot, const char *fmt, ...)
{
    if (slot < CM_SLOT_ANY || slot >= CM_CLUSTER_SLOTS) {
        fprintf(stderr, "cm_pipe_command: slot %d out of range\n", slot);
        abort();
    }
    va_list ap;
    va_start(ap, fmt);
    req_vformat(pipe_slot(p), slot, fmt, ap);
    va_end(ap);
    p->n++;
}

void cm_pipe_multi(cm_pipe *p, int slot, const cm_argv *cmds, int n)
{
    if (slot < CM_SLOT_ANY || slot >= CM_CLUSTER_SLOTS || n < 0) {
        fprintf(stderr, "cm_pipe_multi: slot %d or count %d out of range\n", slot, n);
        abort();
    }
    req_multi(pipe_slot(p), slot, cmds, n);
    p->n++;
}

int cm_pipe_script(cm_pipe *p, cm_script *s, int numkeys, const cm_argv *a)
{
    int rc = req_script(p->cc, pipe_slot(p), s, numkeys, a);
    if (rc == 0)
        p->n++;
    return rc;
}

size_t cm_pipe_count(const cm_pipe *p)
{
    return p->n;
}

int cm_pipe_slot(const cm_pipe *p, size_t i)
{
    return i < p->n ? p->q[i].slot : -1;
}

int cm_pipe_exec(cm_pipe *p)
{
    return run(p->cc, p->q, p->n);
}

int cm_pipe_exec_blocking(cm_pipe *p)
{
    int budget = p->cc->budget_ms;
    p->cc->budget_ms = 0;
    int rc = run(p->cc, p->q, p->n);
    p->cc->budget_ms = budget;
    return rc;
}

int cm_pipe_node(const cm_pipe *p, size_t i)
{
    return i < p->n ? p->q[i].answered : -1;
}

redisReply *cm_pipe_take(cm_pipe *p, size_t i)
{
    if (i >= p->n)
        return NULL;
    redisReply *r = p->q[i].reply;
    p->q[i].reply = NULL;
    return r;
}
