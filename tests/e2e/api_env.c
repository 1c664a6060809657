/* api_env.c - a redis-server and a chorus-api process per test. */
#include "tests/e2e/api_env.h"
#include "tests/support/proc.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static const char *api_bin(void)
{
    const char *b = getenv("CHORUS_API_BIN");
    cr_assert(b && *b, "CHORUS_API_BIN is not set (run through meson test)");
    return b;
}

static bool health_ok(void *ud)
{
    api_env *e = ud;
    tf_http_resp r;
    tf_http h;
    bool ok = false;
    if (tf_http_open(&h, e->port, 500) == 0) {
        ok = tf_http_do(&h, "GET", "/health", NULL, NULL, 0, &r, 1000) == 0 && r.status == 200;
        tf_http_resp_free(&r);
        tf_http_close(&h);
    }
    return ok;
}

static bool api_exited(void *ud)
{
    api_env *e = ud;
    int st;
    if (tf_wait_exit(e->api, 0, &st) == 0) {
        e->api = 0;
        return true;
    }
    return health_ok(e);
}

void ae_start_api(api_env *e)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        e->port = tf_free_port();
        cr_assert_gt(e->port, 0);
        char port[32], url[340], tok[96];
        snprintf(port, sizeof port, "API_PORT=%d", e->port);
        snprintf(url, sizeof url, "REDIS_URL=%s", e->r.url);
        snprintf(tok, sizeof tok, "CHORUS_ADMIN_TOKEN=%s", e->token);
        const char *env[12] = {port, url, tok, "API_THREADS=2", "LOG_LEVEL=info", "BUS_STREAM=" AE_BUS};
        int n = 6;
        for (int i = 0; i < 4 && e->extra_env[i][0]; i++)
            env[n++] = e->extra_env[i];
        env[n] = NULL;
        const char *argv[] = {api_bin(), NULL};
        e->api = tf_spawn(argv, env, e->log);
        cr_assert_gt(e->api, 0, "cannot run %s: %s", api_bin(), strerror(errno));
        /* up, or exited (port taken between probe and bind: try another) */
        cr_assert(tf_wait_until(api_exited, e, 15000), "chorus-api did not answer /health");
        if (e->api)
            return;
    }
    tf_dump_file(e->log, "chorus-api log");
    cr_assert_fail("chorus-api failed to start 5 times");
}

void ae_setup(api_env *e, const char *redis_conf, const char *token, const char *const *extra_env)
{
    memset(e, 0, sizeof *e);
    cr_assert_eq(tf_redis_start(&e->r, redis_conf), 0, "cannot start redis-server");
    e->c = tf_redis_connect(&e->r);
    snprintf(e->token, sizeof e->token, "%s", token ? token : "");
    for (int i = 0; extra_env && extra_env[i] && i < 4; i++)
        snprintf(e->extra_env[i], sizeof e->extra_env[i], "%s", extra_env[i]);
    snprintf(e->log, sizeof e->log, "%s/api.log", e->r.dir);
    ae_start_api(e);
}

/* True if the log has a sanitizer report. */
static bool log_has_report(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char line[4096];
    bool bad = false;
    while (!bad && fgets(line, sizeof line, f))
        bad = strstr(line, "AddressSanitizer") || strstr(line, "LeakSanitizer") || strstr(line, "runtime error:");
    fclose(f);
    return bad;
}

void ae_stop_api(api_env *e)
{
    if (!e->api)
        return;
    pid_t pid = e->api;
    e->api = 0;
    tf_kill(pid, SIGTERM);
    int st = 0;
    if (tf_wait_exit(pid, 15000, &st) != 0) {
        tf_kill(pid, SIGKILL);
        tf_wait_exit(pid, 5000, &st);
        tf_dump_file(e->log, "chorus-api log");
        cr_assert_fail("chorus-api did not stop within 15 s of SIGTERM");
    }
    bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0 && !log_has_report(e->log);
    if (!clean)
        tf_dump_file(e->log, "chorus-api log");
    cr_assert(clean, "chorus-api did not exit cleanly (status 0x%x)", st);
}

void ae_teardown(api_env *e)
{
    ae_stop_api(e);
    if (e->c)
        redisFree(e->c);
    e->c = NULL;
    tf_redis_stop(&e->r);
}

redisReply *ae_cmd(api_env *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(e->c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "redis: %s", e->c->errstr);
    if (r->type == REDIS_REPLY_ERROR) {
        char err[256];
        snprintf(err, sizeof err, "%s", r->str);
        freeReplyObject(r);
        cr_assert_fail("redis: %s", err);
    }
    return r;
}

long long ae_int(api_env *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(e->c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "redis: %s", e->c->errstr);
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "not an integer reply (%d)", r->type);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

void ae_product(api_env *e, const char *id, long long price_cents, long long available)
{
    freeReplyObject(ae_cmd(e, "HSET chorus:product:%s name %s price_cents %lld available %lld reserved 0 sold 0", id,
                           id, price_cents, available));
    freeReplyObject(ae_cmd(e, "SADD chorus:products %s", id));
}

void ae_req(api_env *e, const char *method, const char *path, const char *headers, const char *body,
            tf_http_resp *out)
{
    int rc = tf_http_request(e->port, method, path, headers, body, out);
    if (rc != 0)
        tf_dump_file(e->log, "chorus-api log");
    cr_assert_eq(rc, 0, "%s %s: no response (%s)", method, path, strerror(errno));
}

json_t *ae_json(const tf_http_resp *r)
{
    json_error_t err;
    json_t *j = json_loadb(r->body, r->body_len, 0, &err);
    cr_assert_not_null(j, "response %d is not JSON (%s): %.300s", r->status, err.text, r->body);
    return j;
}

void ae_assert_error(const tf_http_resp *r, int status, const char *code)
{
    cr_assert_eq(r->status, status, "expected %d %s, got %d: %.300s", status, code, r->status, r->body);
    json_t *j = ae_json(r);
    json_t *err = json_object_get(j, "error");
    cr_assert(json_is_object(err), "no error object: %s", r->body);
    cr_assert_str_eq(json_string_value(json_object_get(err, "code")) ?: "", code, "body: %s", r->body);
    cr_assert(json_is_string(json_object_get(err, "message")), "no message: %s", r->body);
    char ct[128];
    cr_assert_not_null(tf_http_header(r, "Content-Type", ct, sizeof ct));
    cr_assert_str_eq(ct, "application/json");
    json_decref(j);
}

void ae_post_checkout(api_env *e, const char *body, const char *key, tf_http_resp *out)
{
    char headers[512];
    snprintf(headers, sizeof headers, "Content-Type: application/json\r\n%s%s%s", key ? "Idempotency-Key: " : "",
             key ? key : "", key ? "\r\n" : "");
    ae_req(e, "POST", "/api/checkouts", headers, body, out);
}

void ae_checkout(api_env *e, const char *client, const char *pid, int qty, char *id)
{
    char body[512];
    snprintf(body, sizeof body, "{\"client_id\":\"%s\",\"items\":[{\"product_id\":\"%s\",\"quantity\":%d}]}", client,
             pid, qty);
    tf_http_resp r;
    ae_post_checkout(e, body, NULL, &r);
    cr_assert_eq(r.status, 202, "checkout: %d %s", r.status, r.body);
    json_t *j = ae_json(&r);
    const char *cid = json_string_value(json_object_get(j, "checkout_id"));
    cr_assert_not_null(cid);
    snprintf(id, 65, "%s", cid);
    json_decref(j);
    tf_http_resp_free(&r);
}
