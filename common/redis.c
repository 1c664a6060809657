/* redis.c - URL parsing, connect with timeout, argv building, scripts. */
#include "common/redis.h"
#include "common/xmalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cm_redis_url_mask(const char *url, char *out, size_t outlen)
{
    if (!outlen)
        return;
    out[0] = '\0';
    if (!url)
        return;
    const char *rest = strstr(url, "://");
    const char *at = rest ? strrchr(rest + 3, '@') : NULL;
    if (!at) {
        snprintf(out, outlen, "%s", url);
        return;
    }
    rest += 3;
    const char *colon = memchr(rest, ':', (size_t)(at - rest));
    /* scheme:// [user:] *** @ the rest */
    size_t keep = colon ? (size_t)(colon + 1 - url) : (size_t)(rest - url);
    snprintf(out, outlen, "%.*s***%s", (int)keep, url, at);
}

/* Reads host[:port] or [ipv6][:port] from p..end into host and *port (kept
 * when no port is given). Returns 0 or -1 with the reason in err. */
static int parse_hostport(const char *url, const char *p, const char *end, char *host, size_t hostlen,
                          int *port, char *err, size_t errlen)
{
    const char *colon = NULL;
    if (*p == '[') {   /* [ipv6]:port */
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb) {
            snprintf(err, errlen, "REDIS_URL %s: unterminated [ipv6] host", url);
            return -1;
        }
        if (rb == p + 1 || (size_t)(rb - p - 1) >= hostlen)
            goto bad_host;
        memcpy(host, p + 1, (size_t)(rb - p - 1));
        host[rb - p - 1] = '\0';
        if (rb + 1 < end && rb[1] != ':') {
            snprintf(err, errlen, "REDIS_URL %s: expected :port after [ipv6]", url);
            return -1;
        }
        colon = rb + 1 < end ? rb + 1 : NULL;
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        const char *he = colon ? colon : end;
        if (he == p || (size_t)(he - p) >= hostlen)
            goto bad_host;
        memcpy(host, p, (size_t)(he - p));
        host[he - p] = '\0';
    }
    if (colon) {
        char *pend;
        long v = strtol(colon + 1, &pend, 10);
        if (pend != end || pend == colon + 1 || v < 1 || v > 65535) {
            snprintf(err, errlen, "REDIS_URL %s: port must be 1..65535", url);
            return -1;
        }
        *port = (int)v;
    }
    return 0;
bad_host:
    snprintf(err, errlen, "REDIS_URL %s: missing or too long host", url);
    return -1;
}

/* Reads "[user]:password@" or "password@" (everything before the last '@'
 * of p) into out. Returns the position after it (p when there is none), or
 * NULL with the reason in err. */
static const char *parse_userinfo(const char *p, cm_redis_url *out, char *err, size_t errlen)
{
    const char *at = strrchr(p, '@');
    if (!at)
        return p;
    const char *colon = memchr(p, ':', (size_t)(at - p));
    const char *pw = colon ? colon + 1 : p;
    size_t ulen = colon ? (size_t)(colon - p) : 0;
    size_t n = (size_t)(at - pw);
    if (n >= sizeof out->password || ulen >= sizeof out->user) {
        snprintf(err, errlen, "REDIS_URL: user or password too long");
        return NULL;
    }
    memcpy(out->user, p, ulen);
    memcpy(out->password, pw, n);
    return at + 1;
}

/* redis-cluster://[[user]:password@]host[:port][,host[:port]...]: url_in, with
 * url (password masked) for the messages. */
static int parse_cluster(const char *url, const char *url_in, cm_redis_url *out, char *err, size_t errlen)
{
    const char *p = parse_userinfo(url_in + 16, out, err, errlen);
    if (!p)
        return -1;
    if (strpbrk(p, "/?")) {
        snprintf(err, errlen, "REDIS_URL %s: a cluster URL takes host:port seeds only (no /db, no ?query)",
                 url);
        return -1;
    }
    out->cluster = true;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        if (out->nseeds == CM_REDIS_MAX_SEEDS) {
            snprintf(err, errlen, "REDIS_URL %s: more than %d seed nodes", url, CM_REDIS_MAX_SEEDS);
            return -1;
        }
        if (end == p) {
            snprintf(err, errlen, "REDIS_URL %s: empty seed node (expected host:port[,host:port...])", url);
            return -1;
        }
        cm_redis_seed *s = &out->seeds[out->nseeds];
        s->port = 6379;
        if (parse_hostport(url, p, end, s->host, sizeof s->host, &s->port, err, errlen) != 0)
            return -1;
        out->nseeds++;
        if (!comma)
            break;
        p = comma + 1;
    }
    memcpy(out->host, out->seeds[0].host, sizeof out->host);
    out->port = out->seeds[0].port;
    return 0;
}

int cm_redis_url_parse(const char *url_in, cm_redis_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    char url[512];   /* what the messages below show: the URL, password masked */
    cm_redis_url_mask(url_in, url, sizeof url);
    out->port = 6379;
    if (!url_in || !*url_in) {
        snprintf(err, errlen, "REDIS_URL is empty");
        return -1;
    }
    if (!strncmp(url_in, "unix:", 5)) {
        const char *p = url_in + 5;
        if (!strncmp(p, "//", 2))
            p += 2;
        const char *q = strchr(p, '?');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 0 || n >= sizeof out->path || p[0] != '/') {
            snprintf(err, errlen, "REDIS_URL %s: expected unix:/absolute/path[?db=N]", url);
            return -1;
        }
        memcpy(out->path, p, n);
        if (q) {
            char *end;
            if (strncmp(q, "?db=", 4) != 0 || (out->db = (int)strtol(q + 4, &end, 10)) < 0 || *end ||
                end == q + 4) {
                snprintf(err, errlen, "REDIS_URL %s: the only query allowed is ?db=N", url);
                return -1;
            }
        }
        return 0;
    }
    if (!strncmp(url_in, "redis-cluster://", 16))
        return parse_cluster(url, url_in, out, err, errlen);
    if (strncmp(url_in, "redis://", 8) != 0) {
        snprintf(err, errlen,
                 "REDIS_URL %s: expected redis://host:port/db, unix:/path or redis-cluster://host:port,...",
                 url);
        return -1;
    }
    const char *p = parse_userinfo(url_in + 8, out, err, errlen);
    if (!p)
        return -1;
    const char *slash = strchr(p, '/');
    const char *hend = slash ? slash : p + strlen(p);
    if (parse_hostport(url, p, hend, out->host, sizeof out->host, &out->port, err, errlen) != 0)
        return -1;
    if (slash && slash[1]) {
        char *end;
        long db = strtol(slash + 1, &end, 10);
        if (*end || db < 0 || db > 65535) {
            snprintf(err, errlen, "REDIS_URL %s: db must be a number", url);
            return -1;
        }
        out->db = (int)db;
    }
    return 0;
}

bool cm_reply_failed_as(const char *no_reply, redisReply *r, char *err, size_t errlen)
{
    if (!r) {
        snprintf(err, errlen, "redis: %s", no_reply);
        return true;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis: %.*s", (int)r->len, r->str);
        freeReplyObject(r);
        return true;
    }
    return false;
}

bool cm_reply_failed(const redisContext *c, redisReply *r, char *err, size_t errlen)
{
    return cm_reply_failed_as(c && c->errstr[0] ? c->errstr : "no reply", r, err, errlen);
}

/* Sends AUTH [user] password, then SELECT db when not 0. */
static int hello(redisContext *c, const cm_redis_url *u, char *err, size_t errlen)
{
    if (u->password[0]) {
        redisReply *r = u->user[0] ? redisCommand(c, "AUTH %s %s", u->user, u->password)
                                   : redisCommand(c, "AUTH %s", u->password);
        if (cm_reply_failed(c, r, err, errlen))
            return -1;
        freeReplyObject(r);
    }
    if (u->db) {
        redisReply *r = redisCommand(c, "SELECT %d", u->db);
        if (cm_reply_failed(c, r, err, errlen))
            return -1;
        freeReplyObject(r);
    }
    return 0;
}

/* Connects to u; messages name it as where (never with a password). */
static redisContext *connect_to(const cm_redis_url *u, const char *where, int timeout_ms, char *err,
                                size_t errlen)
{
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    redisContext *c = u->path[0] ? redisConnectUnixWithTimeout(u->path, tv)
                                 : redisConnectWithTimeout(u->host, u->port, tv);
    if (!c || c->err) {
        snprintf(err, errlen, "cannot connect to Redis at %s: %s", where, c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(err, errlen, "cannot set Redis timeout: %s", c->errstr);
        redisFree(c);
        return NULL;
    }
    char why[256];
    if (hello(c, u, why, sizeof why) != 0) {
        snprintf(err, errlen, "Redis at %s: %s", where, why);
        redisFree(c);
        return NULL;
    }
    return c;
}

redisContext *cm_redis_connect(const char *url, int timeout_ms, char *err, size_t errlen)
{
    cm_redis_url u;
    if (cm_redis_url_parse(url, &u, err, errlen) != 0)
        return NULL;
    if (u.cluster) {
        snprintf(err, errlen, "REDIS_URL is a redis-cluster:// URL: this program needs a single Redis "
                              "(redis:// or unix:)");
        return NULL;
    }
    char masked[512];
    cm_redis_url_mask(url, masked, sizeof masked);
    return connect_to(&u, masked, timeout_ms, err, errlen);
}

redisContext *cm_redis_connect_url(const cm_redis_url *u, int timeout_ms, char *err, size_t errlen)
{
    char where[300];
    if (u->path[0])
        snprintf(where, sizeof where, "unix:%s", u->path);
    else if (strchr(u->host, ':'))
        snprintf(where, sizeof where, "[%s]:%d", u->host, u->port);
    else
        snprintf(where, sizeof where, "%s:%d", u->host, u->port);
    return connect_to(u, where, timeout_ms, err, errlen);
}

void cm_argv_add(cm_argv *a, const char *s, size_t n)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 16;
        a->v = cm_xrealloc(a->v, sizeof *a->v * (size_t)a->cap);
        a->len = cm_xrealloc(a->len, sizeof *a->len * (size_t)a->cap);
    }
    a->v[a->n] = cm_xstrndup(s, n);
    a->len[a->n] = n;
    a->n++;
}

void cm_argv_adds(cm_argv *a, const char *s)
{
    cm_argv_add(a, s, strlen(s));
}

void cm_argv_addf(cm_argv *a, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof buf) {
        cm_argv_add(a, buf, (size_t)n);
        return;
    }
    char *big = cm_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    cm_argv_add(a, big, (size_t)n);
    free(big);
}

void cm_argv_addll(cm_argv *a, long long v)
{
    cm_argv_addf(a, "%lld", v);
}

void cm_argv_reset(cm_argv *a)
{
    for (int i = 0; i < a->n; i++)
        free(a->v[i]);
    a->n = 0;
}

void cm_argv_free(cm_argv *a)
{
    cm_argv_reset(a);
    free(a->v);
    free(a->len);
    a->v = NULL;
    a->len = NULL;
    a->cap = 0;
}

int cm_script_load(redisContext *c, cm_script *s, char *err, size_t errlen)
{
    redisReply *r = redisCommand(c, "SCRIPT LOAD %s", s->src);
    if (cm_reply_failed(c, r, err, errlen))
        return -1;
    if (r->type != REDIS_REPLY_STRING || r->len != 40) {
        snprintf(err, errlen, "redis: unexpected SCRIPT LOAD reply");
        freeReplyObject(r);
        return -1;
    }
    memcpy(s->sha, r->str, 40);
    s->sha[40] = '\0';
    freeReplyObject(r);
    return 0;
}

/* Builds EVALSHA/EVAL sha|src numkeys a... into a temporary argv view. */
static void append_call(redisContext *c, cm_script *s, bool by_src, int numkeys, const cm_argv *a)
{
    enum { STACK = 64 };
    const char *sv[STACK];
    size_t sl[STACK];
    int argc = a->n + 3;
    const char **v = argc <= STACK ? sv : cm_xmalloc(sizeof *v * (size_t)argc);
    size_t *l = argc <= STACK ? sl : cm_xmalloc(sizeof *l * (size_t)argc);
    char nk[16];
    snprintf(nk, sizeof nk, "%d", numkeys);
    v[0] = by_src ? "EVAL" : "EVALSHA";
    l[0] = strlen(v[0]);
    v[1] = by_src ? s->src : s->sha;
    l[1] = strlen(v[1]);
    v[2] = nk;
    l[2] = strlen(nk);
    for (int i = 0; i < a->n; i++) {
        v[i + 3] = a->v[i];
        l[i + 3] = a->len[i];
    }
    redisAppendCommandArgv(c, argc, v, l);
    if (v != sv) {
        free(v);
        free(l);
    }
}

void cm_script_append(redisContext *c, cm_script *s, int numkeys, const cm_argv *a)
{
    /* EVAL by source also caches the script again under the same SHA. */
    append_call(c, s, s->stale || !s->sha[0], numkeys, a);
    s->stale = false;
}

static bool is_noscript(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOSCRIPT", 8);
}

redisReply *cm_script_reply(redisContext *c, cm_script *s)
{
    redisReply *r = NULL;
    if (redisGetReply(c, (void **)&r) != REDIS_OK)
        return NULL;
    if (is_noscript(r))
        s->stale = true;
    return r;
}

redisReply *cm_script_call(redisContext *c, cm_script *s, int numkeys, const cm_argv *a)
{
    /* First use: load it once so every later call is an EVALSHA, never the
     * whole source again. If the load fails, the EVAL below reports why. */
    char err[256];
    if (!s->sha[0] && cm_script_load(c, s, err, sizeof err) != 0 && c->err)
        return NULL;
    cm_script_append(c, s, numkeys, a);
    redisReply *r = cm_script_reply(c, s);
    if (is_noscript(r)) {
        freeReplyObject(r);
        cm_script_append(c, s, numkeys, a);
        r = cm_script_reply(c, s);
    }
    return r;
}

/* Error replies that mean "Redis cannot serve now": the shared state turns
 * unreachable on them, as on an I/O error. */
static const char *const k_unreachable[] = {"LOADING", "BUSY", "MASTERDOWN", NULL};
/* Error replies a retry may cure while Redis is otherwise answering. */
static const char *const k_transient[] = {"CLUSTERDOWN", "TRYAGAIN", "NOSCRIPT", "READONLY", "OOM",
                                          "MISCONF", "NOREPLICAS", "MOVED", "ASK", "EXECABORT", NULL};

/* True if the error text starts with one of the words in list (then a space
 * or the end). */
static bool error_is(const char *s, size_t n, const char *const *list)
{
    for (; *list; list++) {
        size_t k = strlen(*list);
        if (n >= k && !memcmp(s, *list, k) && (n == k || s[k] == ' '))
            return true;
    }
    return false;
}

cm_redis_fault cm_redis_fault_of_error(const char *s, size_t n)
{
    if (n >= 7 && !memcmp(s, "redis: ", 7)) {   /* as cm_reply_failed words it */
        s += 7;
        n -= 7;
    }
    /* A script whose redis.call failed answers with the callee's error
     * code first (Redis 7: "WRONGTYPE ... script: ..."), a Lua runtime
     * error with "ERR user_script:...": both are classified by that word. */
    if (error_is(s, n, k_unreachable))
        return CM_REDIS_UNREACHABLE;
    if (error_is(s, n, k_transient))
        return CM_REDIS_TRANSIENT;
    return CM_REDIS_PERMANENT;
}

cm_redis_fault cm_redis_fault_of(const redisContext *c, const redisReply *r)
{
    if (!r || (c && c->err))
        return CM_REDIS_UNREACHABLE;
    if (r->type != REDIS_REPLY_ERROR)
        return CM_REDIS_OK;
    return cm_redis_fault_of_error(r->str ? r->str : "", r->str ? r->len : 0);
}

const redisReply *cm_reply_elem(const redisReply *r, size_t i)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements)
        return NULL;
    return r->element[i];
}

bool cm_reply_is_str(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

long long cm_reply_ll(const redisReply *r, long long dflt)
{
    if (!r)
        return dflt;
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING) {
        char *end;
        long long v = strtoll(r->str, &end, 10);
        if (end != r->str && !*end)
            return v;
    }
    return dflt;
}
