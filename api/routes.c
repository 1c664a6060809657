/* routes.c - the route table of DESIGN.md ("HTTP API") and its matcher.
 *
 * A template is a path whose segments are literals or one "{param}"; a
 * request path matches when it has the same number of segments and every
 * literal is equal (a trailing slash is ignored). GET rows also serve HEAD.
 * Metrics label requests with the template, never the raw path, so the
 * number of series stays bounded whatever clients send. Flags: API_F_REDIS
 * routes answer 503 at once while Redis is known down; API_F_ASYNC handlers
 * run on the Redis threads (server.c), so a hung Redis never holds an HTTP
 * thread (the intake routes hand their Redis work to the batcher instead). */
#include "api/api_int.h"

#include <stdio.h>
#include <string.h>

#define F_RX (API_F_REDIS | API_F_ASYNC)   /* needs Redis, runs on a Redis thread */

static const api_route k_routes[] = {
    {"POST", "/api/checkouts", api_h_checkout_post, API_F_JSON | API_F_IDEM | API_F_REDIS, NULL},
    {"GET", "/api/checkouts/{id}", api_h_checkout_get, F_RX, NULL},
    {"POST", "/api/commandes/clients/{client_id}/checkout/choreo", api_h_checkout_alias,
     API_F_JSON | API_F_IDEM | API_F_REDIS, "/api/commandes/clients/{client_id}/checkout/choreo/"},
    {"GET", "/api/event-store/streams/{stream}/events", api_h_stream_events, F_RX, NULL},
    {"GET", "/api/event-store/replay/checkout/{id}", api_h_replay, F_RX, NULL},
    {"GET", "/api/event-store/cqrs/orders-by-client/{client_id}", api_h_orders_by_client, F_RX, NULL},
    {"GET", "/api/products", api_h_products, F_RX, NULL},
    {"GET", "/api/products/{id}", api_h_product_get, F_RX, NULL},
    {"PUT", "/api/products/{id}", api_h_product_put, API_F_JSON | API_F_ADMIN | F_RX, NULL},
    {"GET", "/api/workers", api_h_workers, F_RX, NULL},
    {"GET", "/api/dead-letters", api_h_dead_letters, F_RX, NULL},
    {"POST", "/api/dead-letters/{id}/retry", api_h_dead_letter_retry, API_F_ADMIN | F_RX, NULL},
    {"POST", "/api/dead-letters/retry", api_h_dead_letters_retry_bulk, API_F_JSON | API_F_ADMIN | F_RX, NULL},
    {"GET", "/health", api_h_health, 0, NULL},
    {"GET", "/ready", api_h_ready, API_F_ASYNC, NULL},
    {"GET", "/metrics", api_h_metrics, 0, NULL},
    {"GET", "/api/checkouts/{id}/timeline", api_h_timeline, F_RX, NULL},
    {"GET", "/api/clients/{client_id}/checkouts", api_h_client_checkouts, F_RX, NULL},
    {"GET", "/api/stats/sagas", api_h_saga_stats, F_RX, NULL},
    {"GET", "/ui", api_h_ui_index, 0, "/ui/"},
    {"GET", "/ui/{asset}", api_h_ui_asset, 0, NULL},
    {"GET", "/api/event-store/streams", api_h_streams, F_RX, NULL},
};
#define NROUTES (sizeof k_routes / sizeof k_routes[0])
_Static_assert(NROUTES < API_MAX_ROUTE_LABELS, "a label for every row and unmatched");

/* Metrics route labels: each row's label (its template unless it names
 * one), once each in table order, then "unmatched" (api_routes_init). */
const char *api_route_labels[API_MAX_ROUTE_LABELS];
int api_route_nlabels;
static int k_label_of[NROUTES];   /* row -> index in api_route_labels */

void api_routes_init(void)
{
    api_route_nlabels = 0;
    for (size_t i = 0; i < NROUTES; i++) {
        const char *l = k_routes[i].label ? k_routes[i].label : k_routes[i].tmpl;
        int k = 0;
        while (k < api_route_nlabels && strcmp(api_route_labels[k], l) != 0)
            k++;
        if (k == api_route_nlabels)
            api_route_labels[api_route_nlabels++] = l;
        k_label_of[i] = k;
    }
    api_route_labels[api_route_nlabels++] = "unmatched";
}

/* Matches path against tmpl; on success stores the {param} span. */
static bool match(const char *tmpl, const char *path, size_t plen, char **param, size_t *param_len)
{
    const char *t = tmpl, *p = path, *pend = path + plen;
    *param = NULL;
    *param_len = 0;
    while (*t && p < pend) {
        if (*t != '/' || *p != '/')
            return false;
        t++;
        p++;
        const char *te = strchr(t, '/');
        size_t tl = te ? (size_t)(te - t) : strlen(t);
        const char *pe = memchr(p, '/', (size_t)(pend - p));
        size_t pl = pe ? (size_t)(pe - p) : (size_t)(pend - p);
        if (tl >= 2 && t[0] == '{') {
            *param = (char *)p;
            *param_len = pl;
        } else if (tl != pl || memcmp(t, p, tl) != 0) {
            return false;
        }
        t += tl;
        p += pl;
    }
    return !*t && p == pend;
}

static bool method_is(const api_route *r, const char *method)
{
    if (!strcmp(r->method, method))
        return true;
    return !strcmp(r->method, "GET") && !strcmp(method, "HEAD");
}

const api_route *api_route_find(char *path, const char *method, char **param, size_t *param_len,
                                int *label, char *allow, size_t allowlen)
{
    size_t plen = strlen(path);
    if (plen > 1 && path[plen - 1] == '/')
        plen--;   /* "/api/checkouts/" is "/api/checkouts" */
    *label = api_route_nlabels - 1;
    allow[0] = '\0';
    size_t o = 0;
    const api_route *hit = NULL;
    for (size_t i = 0; i < NROUTES; i++) {
        const api_route *r = &k_routes[i];
        char *pp;
        size_t pl;
        if (!match(r->tmpl, path, plen, &pp, &pl))
            continue;
        *label = k_label_of[i];
        if (!hit && method_is(r, method)) {
            hit = r;
            *param = pp;
            *param_len = pl;
        }
        const char *m = !strcmp(r->method, "GET") ? "GET, HEAD" : r->method;
        int n = snprintf(allow + o, o < allowlen ? allowlen - o : 0, "%s%s", o ? ", " : "", m);
        if (n > 0)
            o += (size_t)n;
    }
    if (hit && *param)
        (*param)[*param_len] = '\0';   /* the trailing slash, if any, is cut too */
    else if (hit)
        path[plen] = '\0';
    return hit;
}
