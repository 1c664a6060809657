/* api_env.h - a private redis-server plus a real chorus-api process (path
 * from CHORUS_API_BIN) for the API's end-to-end tests, and small helpers to
 * talk to both. Helpers that cannot go on abort the test with a criterion
 * assertion. */
#ifndef API_ENV_H
#define API_ENV_H

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

#include "tests/support/http.h"
#include "tests/support/redis_fixture.h"

#define AE_TOKEN "test-admin-token"
#define AE_BUS "ecommerce.checkout.events"

typedef struct api_env {
    tf_redis r;
    redisContext *c;      /* the test's own connection */
    pid_t api;            /* 0 when not running */
    int port;
    char log[360];        /* the API's stdout+stderr */
    char token[64];       /* "" : admin disabled */
    char extra_env[4][256];   /* a cluster REDIS_URL is long */
} api_env;

/* Starts redis (extra_conf as for tf_redis_start) and the API with the admin
 * token token (NULL: admin disabled) and up to 4 extra "K=V" settings
 * (NULL-terminated, may be NULL), then waits until /health answers. */
void ae_setup(api_env *e, const char *redis_conf, const char *token, const char *const *extra_env);
/* SIGTERMs the API and asserts it exited 0 with a clean log (no sanitizer
 * report), then stops redis. Safe to call twice. */
void ae_teardown(api_env *e);
/* Starts the API again with the same settings (after ae_stop_api). */
void ae_start_api(api_env *e);
/* SIGTERMs the API, asserts exit 0 and no sanitizer report in its log. */
void ae_stop_api(api_env *e);

/* Adds a product straight into the catalog keys. */
void ae_product(api_env *e, const char *id, long long price_cents, long long available);

/* Runs a Redis command that must succeed; returns the reply (caller frees). */
redisReply *ae_cmd(api_env *e, const char *fmt, ...);
/* A command's integer reply (asserts it is one). */
long long ae_int(api_env *e, const char *fmt, ...);

/* One request on a fresh connection; asserts a response came back. */
void ae_req(api_env *e, const char *method, const char *path, const char *headers, const char *body,
            tf_http_resp *out);
/* The response body parsed (caller json_decref's); asserts it is JSON. */
json_t *ae_json(const tf_http_resp *r);
/* Asserts r is status with an {"error":{"code","message"}} body of code. */
void ae_assert_error(const tf_http_resp *r, int status, const char *code);

/* POSTs a checkout body (with Idempotency-Key key unless NULL) and returns
 * the response. */
void ae_post_checkout(api_env *e, const char *body, const char *key, tf_http_resp *out);
/* POSTs {"client_id":client,"items":[{"product_id":pid,"quantity":qty}]},
 * asserts 202 and copies the checkout id into id[64+]. */
void ae_checkout(api_env *e, const char *client, const char *pid, int qty, char *id);

#endif
