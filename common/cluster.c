/* cluster.c - slot hashing, the node table and the slot map.
 *
 * State: a table of nodes (host, port, a lazily opened sync connection) and
 * owner[slot], the index of the master believed to own each slot. A single
 * server is node 0 owning every slot. Nodes are never removed: a cluster has
 * a handful, and a dead one simply stays disconnected.
 * The request engine (rounds, redirections, retries) is cluster_run.c. */
#include "common/cluster_int.h"
#include "common/clock.h"
#include "common/xmalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
    DEFAULT_RETRY_MS = 5000,   /* cm_cluster_set_retry default */
    SKIP_MIN_MS = 50,          /* best effort: a node that gave up is skipped this long, */
    SKIP_MAX_MS = 2000,        /* doubling to this while it keeps giving up */
};

/* ---- slots ------------------------------------------------------------- */

uint16_t cm_crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

int cm_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        const char *from = open + 1;
        const char *close = memchr(from, '}', len - (size_t)(from - key));
        if (close && close > from)
            return cm_crc16(from, (size_t)(close - from)) & (CM_CLUSTER_SLOTS - 1);
    }
    return cm_crc16(key, len) & (CM_CLUSTER_SLOTS - 1);
}

int cm_argv_slot(const cm_argv *a, int i)
{
    return i >= 0 && i < a->n ? cm_key_slot(a->v[i], a->len[i]) : CM_SLOT_ANY;
}

/* ---- errors and nodes -------------------------------------------------- */

void cm_cluster_set_err(cm_cluster *cc, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cc->errstr, sizeof cc->errstr, fmt, ap);
    va_end(ap);
    cc->err = code;
}

/* The index of host:port, added (disconnected) when new. */
int cm_cluster_node_get(cm_cluster *cc, const char *host, size_t hostlen, int port)
{
    if (hostlen >= sizeof cc->nodes[0].host)
        hostlen = sizeof cc->nodes[0].host - 1;
    for (int i = 0; i < cc->nnodes; i++)
        if (cc->nodes[i].port == port && strlen(cc->nodes[i].host) == hostlen &&
            !memcmp(cc->nodes[i].host, host, hostlen))
            return i;
    if (cc->nnodes == cc->capnodes) {
        cc->capnodes = cc->capnodes ? cc->capnodes * 2 : 8;
        cc->nodes = cm_xrealloc(cc->nodes, sizeof *cc->nodes * (size_t)cc->capnodes);
    }
    node *n = &cc->nodes[cc->nnodes];
    memset(n, 0, sizeof *n);
    memcpy(n->host, host, hostlen);
    n->port = port;
    return cc->nnodes++;
}

/* Fills u with what connecting to node i needs (credentials included). */
static void node_url(const cm_cluster *cc, int i, cm_redis_url *u)
{
    if (!cc->url.cluster) {
        *u = cc->url;
        return;
    }
    memset(u, 0, sizeof *u);
    snprintf(u->host, sizeof u->host, "%s", cc->nodes[i].host);
    u->port = cc->nodes[i].port;
    memcpy(u->user, cc->url.user, sizeof u->user);
    memcpy(u->password, cc->url.password, sizeof u->password);
}

int cm_cluster_io_ms(const cm_cluster *cc)
{
    bool cap = cc->budget_ms > 0 && (cc->timeout_ms <= 0 || cc->budget_ms < cc->timeout_ms);
    return cap ? cc->budget_ms : cc->timeout_ms;
}

/* Node i's connection, opened when needed, its I/O timeout that of a call
 * now (a frozen node costs a best effort call the budget, not the open
 * timeout); NULL with errstr on failure. A borrowed connection's timeout is
 * its owner's. */
redisContext *cm_cluster_node_conn(cm_cluster *cc, int i)
{
    node *n = &cc->nodes[i];
    int io = cm_cluster_io_ms(cc);
    if (n->c) {
        if (!cc->borrowed && n->tmo_ms != io) {   /* io 0: back to no timeout */
            struct timeval tv = {io / 1000, (io % 1000) * 1000};
            if (redisSetTimeout(n->c, tv) == REDIS_OK)
                n->tmo_ms = io;
        }
        return n->c;
    }
    cm_redis_url u;
    char err[300];
    node_url(cc, i, &u);
    n->c = cm_redis_connect_url(&u, io, err, sizeof err);
    if (!n->c)
        cm_cluster_set_err(cc, CM_CLUSTER_EUNAVAIL, "%s", err);
    n->tmo_ms = io;
    return n->c;
}

bool cm_cluster_node_skipped(const cm_cluster *cc, int i)
{
    const node *n = &cc->nodes[i];
    return cc->budget_ms > 0 && (n->given_up || cm_mono_ms() < n->skip_until_ms);
}

void cm_cluster_node_note_skip(cm_cluster *cc, int i)
{
    node *n = &cc->nodes[i];
    if (n->given_up)
        return;
    n->given_up = true;
    size_t off = strlen(cc->skipped);
    if (off + 80 < sizeof cc->skipped)   /* a few addresses say enough */
        snprintf(cc->skipped + off, sizeof cc->skipped - off, "%s%.64s:%d", off ? ", " : "", n->host, n->port);
    cc->nskipped++;
}

void cm_cluster_node_give_up(cm_cluster *cc, int i)
{
    node *n = &cc->nodes[i];
    if (n->given_up)
        return;
    n->backoff_ms = n->backoff_ms ? n->backoff_ms * 2 : SKIP_MIN_MS;
    if (n->backoff_ms > SKIP_MAX_MS)
        n->backoff_ms = SKIP_MAX_MS;
    n->skip_until_ms = cm_mono_ms() + n->backoff_ms;
    cm_cluster_node_note_skip(cc, i);
}

/* Drops node i's connection after an I/O error, recording why. */
void cm_cluster_node_drop(cm_cluster *cc, int i)
{
    node *n = &cc->nodes[i];
    if (!n->c)
        return;
    cm_cluster_set_err(cc, CM_CLUSTER_EUNAVAIL, "Redis at %s:%d: %s", n->host, n->port,
                       n->c->errstr[0] ? n->c->errstr : "connection lost");
    if (cc->borrowed)
        return;   /* the owner reconnects; every later call fails until then */
    redisFree(n->c);
    n->c = NULL;
    if (cc->url.cluster)
        cc->map_stale = true;   /* a master may have failed over */
}

/* ---- the slot map ------------------------------------------------------ */

/* An endpoint the client should replace by the address it asked:
 * NULL, "" (node does not know its IP) or "?" (unknown endpoint). */
static bool endpoint_unknown(const redisReply *h)
{
    return !h || h->type == REDIS_REPLY_NIL ||
           (h->type == REDIS_REPLY_STRING && (h->len == 0 || (h->len == 1 && h->str[0] == '?')));
}

/* Applies a CLUSTER SLOTS reply ([[start, end, [host, port, id, ...],
 * replicas...], ...]) read from node `from`. Returns 0, or -1 when the
 * shape is foreign (the map is left as it was). */
static int apply_slots(cm_cluster *cc, const redisReply *r, int from)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0)
        return -1;
    int16_t owner[CM_CLUSTER_SLOTS];
    for (int s = 0; s < CM_CLUSTER_SLOTS; s++)
        owner[s] = -1;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        const redisReply *m = cm_reply_elem(e, 2);
        long long lo = cm_reply_ll(cm_reply_elem(e, 0), -1), hi = cm_reply_ll(cm_reply_elem(e, 1), -1);
        long long port = cm_reply_ll(cm_reply_elem(m, 1), -1);
        const redisReply *h = cm_reply_elem(m, 0);
        if (lo < 0 || hi < lo || hi >= CM_CLUSTER_SLOTS || port < 1 || port > 65535 ||
            (!endpoint_unknown(h) && h->type != REDIS_REPLY_STRING))
            return -1;
        char fallback[256];
        snprintf(fallback, sizeof fallback, "%s", cc->nodes[from].host);
        int idx = endpoint_unknown(h) ? cm_cluster_node_get(cc, fallback, strlen(fallback), (int)port)
                                      : cm_cluster_node_get(cc, h->str, h->len, (int)port);
        for (long long s = lo; s <= hi; s++)
            owner[s] = (int16_t)idx;
    }
    memcpy(cc->owner, owner, sizeof owner);
    return 0;
}

/* Re-reads the slot map from the first node that answers (see
 * cm_cluster_refresh). */
int cm_cluster_reload(cm_cluster *cc)
{
    if (!cc->url.cluster)
        return 0;
    /* Connected masters first (cheap, and their view is current: a replica
     * learns of a moved slot a moment later), then other connected nodes,
     * then every other known node and seed. */
    bool *owns = cm_xcalloc((size_t)cc->nnodes, sizeof *owns);
    int known = cc->nnodes;   /* nodes added by this refresh are not ranked */
    for (int s = 0; s < CM_CLUSTER_SLOTS; s++)
        if (cc->owner[s] >= 0)
            owns[cc->owner[s]] = true;
    int rc = CM_CLUSTER_EUNAVAIL;
    for (int pass = 0; pass < 3 && rc != 0; pass++) {
        for (int i = 0; i < cc->nnodes && rc != 0; i++) {
            bool connected = cc->nodes[i].c != NULL, master = i < known && owns[i];
            if (pass != (connected ? (master ? 0 : 1) : 2) || cm_cluster_node_skipped(cc, i))
                continue;
            redisContext *c = cm_cluster_node_conn(cc, i);
            if (!c)
                continue;
            redisReply *r = redisCommand(c, "CLUSTER SLOTS");
            if (!r) {
                cm_cluster_node_drop(cc, i);
                continue;
            }
            if (r->type != REDIS_REPLY_ERROR && apply_slots(cc, r, i) == 0) {
                freeReplyObject(r);
                cc->map_stale = false;
                rc = 0;
                break;
            }
            bool e = r->type == REDIS_REPLY_ERROR;
            cm_cluster_set_err(cc, CM_CLUSTER_EUNAVAIL, "Redis at %s:%d: CLUSTER SLOTS: %.*s",
                               cc->nodes[i].host, cc->nodes[i].port, e ? (int)r->len : 16,
                               e ? r->str : "unexpected reply");
            freeReplyObject(r);
        }
    }
    free(owns);
    return rc;
}

int cm_cluster_refresh(cm_cluster *cc)
{
    return cm_cluster_reload(cc);
}

/* The node to send slot's commands to, or -1 when no owner is known. */
int cm_cluster_route(const cm_cluster *cc, int slot)
{
    if (slot != CM_SLOT_ANY)
        return cc->owner[slot];
    for (int s = 0; s < CM_CLUSTER_SLOTS; s++)
        if (cc->owner[s] >= 0)
            return cc->owner[s];
    return -1;
}

int cm_cluster_master_slots(const cm_cluster *cc, int *slot, int max)
{
    int n = 0;
    for (int s = 0; s < CM_CLUSTER_SLOTS && n < max; s++) {
        int o = cc->owner[s];
        bool seen = o < 0;
        for (int j = 0; j < n && !seen; j++)
            seen = cc->owner[slot[j]] == o;
        if (!seen)
            slot[n++] = s;
    }
    return n;
}

int cm_cluster_slot_addr(const cm_cluster *cc, int slot, cm_redis_url *out)
{
    if (slot < CM_SLOT_ANY || slot >= CM_CLUSTER_SLOTS)
        return CM_CLUSTER_EARG;
    int n = cm_cluster_route(cc, slot);
    if (n < 0)
        return CM_CLUSTER_EARG;
    node_url(cc, n, out);
    return 0;
}

/* ---- open / free ------------------------------------------------------- */

cm_cluster *cm_cluster_open(const char *url, int timeout_ms, char *err, size_t errlen)
{
    cm_cluster *cc = cm_xcalloc(1, sizeof *cc);
    cc->timeout_ms = timeout_ms;
    cc->retry_ms = DEFAULT_RETRY_MS;
    if (cm_redis_url_parse(url, &cc->url, err, errlen) != 0)
        goto fail;
    if (!cc->url.cluster) {
        /* node 0, owning every slot */
        cm_cluster_node_get(cc, cc->url.host, strlen(cc->url.host), cc->url.port);
        memset(cc->owner, 0, sizeof cc->owner);
        if (!cm_cluster_node_conn(cc, 0)) {
            snprintf(err, errlen, "%s", cc->errstr);
            goto fail;
        }
        return cc;
    }
    for (int i = 0; i < cc->url.nseeds; i++)
        cm_cluster_node_get(cc, cc->url.seeds[i].host, strlen(cc->url.seeds[i].host), cc->url.seeds[i].port);
    for (int s = 0; s < CM_CLUSTER_SLOTS; s++)
        cc->owner[s] = -1;
    if (cm_cluster_reload(cc) != 0) {
        snprintf(err, errlen, "cannot read the cluster slot map from any seed: %s", cc->errstr);
        goto fail;
    }
    cc->err = 0;
    cc->errstr[0] = '\0';
    return cc;
fail:
    cm_cluster_free(cc);
    return NULL;
}

cm_cluster *cm_cluster_borrow(redisContext *c)
{
    cm_cluster *cc = cm_xcalloc(1, sizeof *cc);
    cc->borrowed = true;
    cc->timeout_ms = 0;
    cc->retry_ms = 0;
    cm_cluster_node_get(cc, "borrowed", strlen("borrowed"), 0);
    cc->nodes[0].c = c;
    memset(cc->owner, 0, sizeof cc->owner);
    return cc;
}

void cm_cluster_free(cm_cluster *cc)
{
    if (!cc)
        return;
    for (int i = 0; i < cc->nnodes && !cc->borrowed; i++)
        redisFree(cc->nodes[i].c);
    free(cc->nodes);
    free(cc);
}

void cm_cluster_set_retry(cm_cluster *cc, int retry_ms)
{
    cc->retry_ms = retry_ms < 0 ? 0 : retry_ms;
}

void cm_cluster_set_best_effort(cm_cluster *cc, int budget_ms)
{
    cc->budget_ms = budget_ms < 0 ? 0 : budget_ms;
}

int cm_cluster_best_effort(const cm_cluster *cc)
{
    return cc->budget_ms;
}

void cm_cluster_skips_begin(cm_cluster *cc)
{
    for (int i = 0; i < cc->nnodes; i++)
        cc->nodes[i].given_up = false;
    cc->nskipped = 0;
    cc->skipped[0] = '\0';
}

int cm_cluster_skips(const cm_cluster *cc, char *what, size_t whatlen)
{
    if (whatlen)
        snprintf(what, whatlen, "%s", cc->skipped);
    return cc->nskipped;
}

bool cm_cluster_is_cluster(const cm_cluster *cc)
{
    return cc->url.cluster;
}

int cm_cluster_err(const cm_cluster *cc)
{
    return cc->err;
}

const char *cm_cluster_errstr(const cm_cluster *cc)
{
    return cc->errstr;
}

bool cm_cluster_reply_failed(const cm_cluster *cc, redisReply *r, char *err, size_t errlen)
{
    return cm_reply_failed_as(cc ? cc->errstr : "not connected", r, err, errlen);
}

