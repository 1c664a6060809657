/* saga_env.c - the saga tests' environment (see saga_env.h). */
#include "tests/e2e/saga_env.h"

#include <criterion/criterion.h>

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/names.h"
#include "common/redis.h"
#include "event_store/deadletter.h"
#include "tests/support/proc.h"

static const char *worker_bin(void)
{
    const char *b = getenv("CHORUS_WORKER_BIN");
    cr_assert(b && *b, "CHORUS_WORKER_BIN is not set (run through meson test)");
    return b;
}

void sg_setup(sg_env *e, const char *extra_conf)
{
    memset(e, 0, sizeof *e);
    cr_assert_eq(tf_redis_start(&e->r, extra_conf), 0, "cannot start redis-server");
    e->c = tf_redis_connect(&e->r);
    char err[256] = "";
    e->s = es_store_new(e->c, NULL, err, sizeof err);
    cr_assert_not_null(e->s, "es_store_new: %s", err);
}

void sg_teardown(sg_env *e)
{
    for (int i = 0; i < e->np; i++)
        if (e->p[i].pid > 0) {
            tf_kill(e->p[i].pid, SIGKILL);
            tf_wait_exit(e->p[i].pid, 5000, NULL);
            e->p[i].pid = 0;
        }
    es_store_free(e->s);
    e->s = NULL;
    if (e->c)
        redisFree(e->c);
    e->c = NULL;
    tf_redis_stop(&e->r);
}

void sg_reconnect(sg_env *e)
{
    es_store_free(e->s);
    if (e->c)
        redisFree(e->c);
    e->c = tf_redis_connect(&e->r);
    char err[256] = "";
    e->s = es_store_new(e->c, NULL, err, sizeof err);
    cr_assert_not_null(e->s, "es_store_new: %s", err);
}

static void spawn(sg_env *e, int i)
{
    sg_proc *p = &e->p[i];
    char url[340], *envp[SG_MAX_ENV + 8];
    snprintf(url, sizeof url, "REDIS_URL=%s", e->r.url);
    const char *base[] = {url, "METRICS_PORT=0", "CLAIM_IDLE_MS=1000", "BLOCK_MS=100", "LOG_LEVEL=warn"};
    int k = 0;
    for (size_t b = 0; b < sizeof base / sizeof base[0]; b++) {
        size_t kl = strcspn(base[b], "=") + 1;
        bool overridden = false;
        for (int j = 0; j < p->nenv; j++)
            overridden = overridden || !strncmp(p->env[j], base[b], kl);
        if (!overridden)
            envp[k++] = (char *)base[b];
    }
    for (int j = 0; j < p->nenv; j++)
        envp[k++] = p->env[j];
    envp[k] = NULL;
    const char *argv[] = {worker_bin(), p->name, NULL};
    p->pid = tf_spawn(argv, (const char *const *)envp, p->log);
    cr_assert_gt(p->pid, 0, "cannot spawn %s %s", argv[0], p->name);
}

int sg_spawn(sg_env *e, const char *name, const char *const *env)
{
    cr_assert_lt(e->np, SG_MAX_PROCS);
    int i = e->np++;
    sg_proc *p = &e->p[i];
    snprintf(p->name, sizeof p->name, "%s", name);
    for (p->nenv = 0; env && env[p->nenv]; p->nenv++) {
        cr_assert_lt(p->nenv, SG_MAX_ENV);
        snprintf(p->env[p->nenv], sizeof p->env[0], "%s", env[p->nenv]);
    }
    snprintf(p->log, sizeof p->log, "%s/%s-%d.log", e->r.dir, name, i);
    spawn(e, i);
    return i;
}

int sg_spawn_saga(sg_env *e, const char *const *env)
{
    int first = sg_spawn(e, "stock-reservation", env);
    sg_spawn(e, "order-creation", env);
    sg_spawn(e, "stock-compensation", env);
    return first;
}

void sg_kill9(sg_env *e, int i)
{
    sg_proc *p = &e->p[i];
    cr_assert_gt(p->pid, 0, "%s is not running", p->name);
    cr_assert_eq(tf_kill(p->pid, SIGKILL), 0);
    cr_assert_eq(tf_wait_exit(p->pid, 5000, NULL), 0);
    p->pid = 0;
}

void sg_restart(sg_env *e, int i)
{
    cr_assert_eq(e->p[i].pid, 0, "%s is still running", e->p[i].name);
    spawn(e, i);
}

static bool is_saga_worker(const char *name)
{
    return !strcmp(name, "stock-reservation") || !strcmp(name, "order-creation") ||
           !strcmp(name, "stock-compensation");
}

int sg_stop_workers(sg_env *e)
{
    int bad = 0;
    for (int i = 0; i < e->np; i++)
        if (e->p[i].pid > 0)
            tf_kill(e->p[i].pid, SIGTERM);
    for (int i = 0; i < e->np; i++) {
        sg_proc *p = &e->p[i];
        if (p->pid <= 0)
            continue;
        int st = 0;
        if (tf_wait_exit(p->pid, 20000, &st) != 0) {
            tf_kill(p->pid, SIGKILL);
            tf_wait_exit(p->pid, 5000, &st);
            st = -1;
        }
        p->pid = 0;
        bool clean = st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (!clean && is_saga_worker(p->name)) {
            bad++;
            fprintf(stderr, "%s did not exit cleanly (status %d)\n", p->name, st);
            tf_dump_file(p->log, p->name);
        }
    }
    return bad;
}

long long sg_metric(int port, const char *series)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect to metrics port %d", port);
    const char req[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    cr_assert_eq(write(fd, req, sizeof req - 1), (ssize_t)(sizeof req - 1));
    cm_buf b = CM_BUF_INIT;
    char chunk[4096];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof chunk)) > 0)
        cm_buf_put(&b, chunk, (size_t)n);
    close(fd);
    long long v = -1;
    size_t sl = strlen(series);
    for (const char *line = b.data; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (!strncmp(line, series, sl) && line[sl] == ' ')
            v = atoll(line + sl + 1);
    cm_buf_free(&b);
    return v;
}

void sg_dump_logs(const sg_env *e)
{
    for (int i = 0; i < e->np; i++)
        tf_dump_file(e->p[i].log, e->p[i].name);
}

static redisReply *vcmd(sg_env *e, const char *fmt, va_list ap)
{
    redisReply *r = redisvCommand(e->c, fmt, ap);
    cr_assert_not_null(r, "redis: %s", e->c->errstr);
    cr_assert_neq(r->type, REDIS_REPLY_ERROR, "redis: %s", r->str);
    return r;
}

long long sg_count_keys(sg_env *e, const char *pattern)
{
    long long n = 0;
    char cursor[32] = "0";
    do {
        redisReply *r = redisCommand(e->c, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2, "SCAN failed");
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        n += (long long)r->element[1]->elements;
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return n;
}

long long sg_ll(sg_env *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(e, fmt, ap);
    va_end(ap);
    long long v = cm_reply_ll(r, -1);
    freeReplyObject(r);
    return v;
}

char *sg_str(sg_env *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(e, fmt, ap);
    va_end(ap);
    char *s = cm_reply_is_str(r) ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return s;
}

void sg_product(sg_env *e, const char *id, long long available)
{
    sg_ll(e, "HSET chorus:product:%s name %s price_cents 100 available %lld reserved 0 sold 0", id, id,
          available);
    sg_ll(e, "SADD chorus:products %s", id);
}

void sg_stock(sg_env *e, const char *id, long long *available, long long *reserved, long long *sold)
{
    redisReply *r = redisCommand(e->c, "HMGET chorus:product:%s available reserved sold", id);
    cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 3, "HMGET product %s", id);
    *available = cm_reply_ll(r->element[0], -999999);
    *reserved = cm_reply_ll(r->element[1], -999999);
    *sold = cm_reply_ll(r->element[2], -999999);
    freeReplyObject(r);
}

void sg_checkout(sg_env *e, const char *checkout_id, const char *client_id, const sg_line *lines, size_t n)
{
    json_t *items = json_array();
    json_int_t total = 0;
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(items, json_pack("{s:s, s:I, s:I}", "product_id", lines[i].product_id,
                                               "quantity", (json_int_t)lines[i].qty, "unit_price_cents",
                                               (json_int_t)lines[i].unit_price_cents));
        total += lines[i].qty * lines[i].unit_price_cents;
    }
    json_t *data = json_pack("{s:s, s:o, s:I}", "client_id", client_id, "items", items, "total_cents", total);
    es_new_event ev = {.type = "CheckoutInitiated", .data = data};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = checkout_id, .producer = "api",
                         .expected_version = 0, .events = &ev, .n = 1};
    es_append_res res;
    int rc = es_append(e->s, &req, &res);
    json_decref(data);
    cr_assert_eq(rc, ES_OK, "append CheckoutInitiated %s: %s", checkout_id, es_store_errstr(e->s));
}

char *sg_types(sg_env *e, const char *checkout_id)
{
    es_event **evs;
    size_t n;
    cr_assert_eq(es_history_read(e->s, "checkout", checkout_id, &evs, &n), ES_OK);
    cm_buf b = CM_BUF_INIT;
    for (size_t i = 0; i < n; i++) {
        if (i)
            cm_buf_putc(&b, ',');
        cm_buf_puts(&b, evs[i]->type);
    }
    es_events_free(evs, n);
    if (!b.data)
        cm_buf_puts(&b, "");
    return cm_buf_steal(&b);
}

char *sg_data_str(sg_env *e, const char *checkout_id, const char *type, const char *key)
{
    es_event **evs;
    size_t n;
    cr_assert_eq(es_history_read(e->s, "checkout", checkout_id, &evs, &n), ES_OK);
    char *out = NULL;
    for (size_t i = 0; i < n && !out; i++) {
        if (strcmp(evs[i]->type, type) != 0)
            continue;
        json_t *v = json_object_get(evs[i]->data, key);
        out = json_is_string(v) ? strdup(json_string_value(v)) : json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    }
    es_events_free(evs, n);
    return out;
}

void sg_fold(sg_env *e, const char *checkout_id, es_checkout_state *st)
{
    es_event **evs;
    size_t n;
    cr_assert_eq(es_history_read(e->s, "checkout", checkout_id, &evs, &n), ES_OK);
    es_checkout_fold(evs, n, st);
    es_events_free(evs, n);
}

/* True if a history element "event_id\nbus_id\ntype\n..." is a terminal event. */
static bool terminal_element(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_STRING)
        return false;
    const char *a = strchr(r->str, '\n');
    const char *b = a ? strchr(a + 1, '\n') : NULL;
    return b && (!strncmp(b + 1, "CheckoutSucceeded\n", 18) || !strncmp(b + 1, "CheckoutFailed\n", 15));
}

typedef struct terminal_wait {
    sg_env *e;
    char *const *ids;
    size_t n, done;     /* ids[0..done) are known to have ended */
} terminal_wait;

static bool all_terminal(void *ud)
{
    terminal_wait *w = ud;
    size_t from = w->done;
    for (size_t i = from; i < w->n; i++)
        redisAppendCommand(w->e->c, "LINDEX %s -1", cm_key_history("checkout", w->ids[i]).s);
    bool all = true;
    for (size_t i = from; i < w->n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(w->e->c, (void **)&r) != REDIS_OK)
            cr_assert_fail("redis: %s", w->e->c->errstr);
        bool t = terminal_element(r);
        freeReplyObject(r);
        if (all && t)
            w->done = i + 1;
        all = all && t;
    }
    return all;
}

size_t sg_count_terminal(sg_env *e, char *const *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        redisAppendCommand(e->c, "LINDEX %s -1", cm_key_history("checkout", ids[i]).s);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(e->c, (void **)&r) != REDIS_OK)
            cr_assert_fail("redis: %s", e->c->errstr);
        k += terminal_element(r);
        freeReplyObject(r);
    }
    return k;
}

bool sg_wait_terminal(sg_env *e, char *const *ids, size_t n, int timeout_ms)
{
    terminal_wait w = {e, ids, n, 0};
    bool ok = tf_wait_until(all_terminal, &w, timeout_ms);
    if (!ok)
        fprintf(stderr, "sg_wait_terminal: %zu of %zu ended; first open: %s\n", w.done, n,
                w.done < n ? ids[w.done] : "-");
    return ok;
}

/* True if the group of every running worker exists on the bus. */
static bool groups_exist(sg_env *e, const redisReply *groups)
{
    for (int i = 0; i < e->np; i++) {
        if (e->p[i].pid <= 0)
            continue;
        const char *want = NULL;
        for (int w = 0; w < CM_W_COUNT; w++)
            if (!strcmp(e->p[i].name, cm_worker_names[w]))
                want = cm_group_names[w];
        bool found = !want;
        for (size_t g = 0; !found && g < groups->elements; g++) {
            const redisReply *f = groups->element[g];
            for (size_t j = 0; j + 1 < f->elements; j += 2)
                if (!strcmp(f->element[j]->str, "name") && !strcmp(f->element[j + 1]->str, want))
                    found = true;
        }
        if (!found)
            return false;
    }
    return true;
}

/* True when the group of every running worker exists, and every group of
 * one partition's bus has read to the end and acknowledged all. */
static bool quiet_partition(sg_env *e, const char *bus)
{
    redisReply *last = redisCommand(e->c, "XREVRANGE %s + - COUNT 1", bus);
    redisReply *r = redisCommand(e->c, "XINFO GROUPS %s", bus);
    bool ok = last && r && r->type == REDIS_REPLY_ARRAY && last->type == REDIS_REPLY_ARRAY;
    ok = ok && groups_exist(e, r);
    const char *last_id = ok && last->elements ? last->element[0]->element[0]->str : "0-0";
    for (size_t i = 0; ok && i < r->elements; i++) {
        const redisReply *g = r->element[i];
        long long pending = -1;
        const char *delivered = "";
        for (size_t j = 0; j + 1 < g->elements; j += 2) {
            const redisReply *k = g->element[j], *v = g->element[j + 1];
            if (!strcmp(k->str, "pending"))
                pending = cm_reply_ll(v, -1);
            else if (!strcmp(k->str, "last-delivered-id") && cm_reply_is_str(v))
                delivered = v->str;
        }
        ok = pending == 0 && !strcmp(delivered, last_id);
    }
    freeReplyObject(last);
    freeReplyObject(r);
    return ok;
}

/* quiet_partition on every partition's bus (cm_partitions()). */
static bool quiet(void *ud)
{
    sg_env *e = ud;
    bool ok = true;
    for (int p = 0; ok && p < cm_partitions(); p++)
        ok = quiet_partition(e, cm_key_bus(es_store_bus(e->s), p).s);
    return ok;
}

bool sg_wait_quiet(sg_env *e, int timeout_ms)
{
    return tf_wait_until(quiet, e, timeout_ms);
}

long long sg_dlq_len(sg_env *e, const char *group)
{
    long long n = 0;
    for (int p = 0; p < cm_partitions(); p++) {   /* every partition's dead letters */
        char k[512];
        es_dlq_stream(cm_key_bus(es_store_bus(e->s), p).s, group, k, sizeof k);
        n += sg_ll(e, "XLEN %s", k);
    }
    return n;
}
