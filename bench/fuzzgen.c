/* fuzzgen.c - the request generator of fuzzgen.h.
 *
 * Mutation of a few templates rather than grammar-driven generation: a route
 * from the API's table with random segments and query strings, an odd
 * method now and then, junk or wrong headers, and a body that is one of the
 * valid bodies truncated, with bytes flipped, with an odd value in place of
 * one of its values, nested deep, replaced by random bytes or grown to many
 * lines. The body is built first in its own buffer so the Content-Length
 * always matches: every request is framed. */
#include "bench/fuzzgen.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "common/names.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* xorshift64: never 0 from a state that is not 0. */
uint64_t fz_rnd(fz_gen *g)
{
    g->s ^= g->s << 13;
    g->s ^= g->s >> 7;
    g->s ^= g->s << 17;
    return g->s;
}

/* Modulo bias is irrelevant at these sizes. */
size_t fz_pick(fz_gen *g, size_t n)
{
    return n ? (size_t)(fz_rnd(g) % n) : 0;
}

static void emit(fz_gen *g, const void *s, size_t n)
{
    if (g->n + n > g->cap) {
        g->full = true;
        n = g->cap - g->n;
    }
    memcpy(g->p + g->n, s, n);
    g->n += n;
}

static void emits(fz_gen *g, const char *s)
{
    emit(g, s, strlen(s));
}

static const char *const k_methods[] = {"GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                                        "TRACE", "BREW", "get"};
static const char *const k_routes[] = {
    "/api/checkouts", "/api/checkouts/*", "/api/checkouts/*/timeline", "/api/commandes/clients/*/checkout/choreo/",
    "/api/products", "/api/products/*", "/api/event-store/streams", "/api/event-store/streams/*/events",
    "/api/event-store/streams/" CM_BUS_STREAM_DEFAULT "/events", "/api/event-store/replay/checkout/*",
    "/api/event-store/cqrs/orders-by-client/*", "/api/workers", "/api/dead-letters", "/api/dead-letters/*/retry",
    "/api/dead-letters/retry", "/api/clients/*/checkouts", "/health", "/ready", "/metrics", "/ui/", "/ui/*", "/*",
    "/api/*/*/*"};
static const char *const k_segments[] = {"", "x", "..", ".", "%00", "%2F", "%zz", "%", "a%20b", "%C3%A9", "%FF",
                                         "0-0", "1-1", "99999999999999999999-1", "-", "_", "chorus:h:x", "soak-ok",
                                         "p1", "01890000-0000-7000-8000-000000000000"};
static const char *const k_queries[] = {"wait_ms", "count", "after", "x", ""};
static const char *const k_qvalues[] = {"0", "-1", "5", "30001", "abc", "1-0", "99999999999999999999999", "", "1000",
                                        "1001", "%00", "1.5", "0-0"};
static const char *const k_bodies[] = {
    "{\"client_id\":\"fz\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}",
    "{\"items\":[{\"product_id\":\"p1\",\"quantity\":2},{\"product_id\":\"p2\",\"quantity\":1}]}",
    "{\"name\":\"Widget\",\"price_cents\":100,\"available\":1000}",
    "{\"group\":\"choreo-audit\",\"count\":5}"};
static const char *const k_values[] = {
    "99999999999999999999999999999", "-1", "1e309", "1.0", "0", "-0", "null", "true", "[]", "{}", "\"\"",
    "\"\\u0000\"", "\"\\ud800\"", "\"\xff\xfe\"", "\"\xc3\x28\"", "\"\xf0\x9f\x98\x80\"", "\"../../x\"", "NaN",
    "1001", "18446744073709551616", "-9223372036854775808", "\"soak-ok\""};

static void gen_segment(fz_gen *g)
{
    if (fz_pick(g, 4) == 0) {
        static const char chars[] = "abcXYZ019-_.~%:@!$&'()*+,;=";
        for (size_t i = 0, n = fz_pick(g, fz_pick(g, 10) ? 80 : 3000); i < n; i++)
            emit(g, &chars[fz_pick(g, sizeof chars - 1)], 1);
    } else {
        emits(g, k_segments[fz_pick(g, ARRAY_LEN(k_segments))]);
    }
}

static void gen_path(fz_gen *g)
{
    for (const char *p = k_routes[fz_pick(g, ARRAY_LEN(k_routes))]; *p; p++) {
        if (*p == '*')
            gen_segment(g);
        else
            emit(g, p, 1);
    }
    for (size_t i = 0, n = fz_pick(g, 3) == 0 ? 1 + fz_pick(g, 3) : 0; i < n; i++) {
        emits(g, i ? "&" : "?");
        emits(g, k_queries[fz_pick(g, ARRAY_LEN(k_queries))]);
        emits(g, "=");
        emits(g, k_qvalues[fz_pick(g, ARRAY_LEN(k_qvalues))]);
    }
}

/* Appends a body to g's buffer (cut short at its cap, g->full set). */
static void gen_body(fz_gen *g)
{
    const char *v = k_bodies[fz_pick(g, ARRAY_LEN(k_bodies))];
    size_t vl = strlen(v), at = g->n;
    switch (fz_pick(g, 8)) {
    case 0:     /* truncated */
        emit(g, v, fz_pick(g, vl));
        break;
    case 1:     /* bytes flipped */
        emits(g, v);
        for (size_t k = 0, m = 1 + fz_pick(g, 4); k < m && g->n > at; k++)
            g->p[at + fz_pick(g, g->n - at)] = (char)fz_rnd(g);
        break;
    case 2: {   /* an odd value in place of one value */
        const char *colon = strchr(v + fz_pick(g, vl), ':');
        if (!colon) {
            emits(g, v);
            break;
        }
        emit(g, v, (size_t)(colon - v) + 1);
        emits(g, k_values[fz_pick(g, ARRAY_LEN(k_values))]);
        const char *rest = colon + 1 + strcspn(colon + 1, ",}]");
        emits(g, rest);
        break;
    }
    case 3: {   /* deep nesting */
        const char *open = fz_pick(g, 2) ? "[" : "{\"a\":";
        for (size_t i = 0, n = 10 + fz_pick(g, 8000); i < n && g->n - at < 50000; i++)
            emits(g, open);
        break;
    }
    case 4:     /* random bytes */
        for (size_t i = 0, n = fz_pick(g, 2000); i < n; i++) {
            char c = (char)fz_rnd(g);
            emit(g, &c, 1);
        }
        break;
    case 5:     /* many lines */
        emits(g, "{\"client_id\":\"fz\",\"items\":[");
        for (size_t i = 0, n = fz_pick(g, 200); i < n; i++) {
            char line[80];
            int l = snprintf(line, sizeof line, "%s{\"product_id\":\"p%zu\",\"quantity\":%zu}", i ? "," : "",
                             fz_pick(g, 3), fz_pick(g, 1500));
            emit(g, line, (size_t)l);
        }
        emits(g, "]}");
        break;
    default:    /* as is */
        emits(g, v);
        break;
    }
}

/* The request line and headers go straight into buf, the body into a stack
 * buffer first, then its Content-Length line and the body. */
size_t fz_request(uint64_t seed, uint64_t seq, const char *admin_token, char *buf, size_t cap)
{
    char body[60 * 1024];
    if (cap < FZ_MAX_REQUEST)
        return 0;
    fz_gen g = {.s = (seed ^ (seq * 0x9E3779B97F4A7C15ull)) | 1, .p = buf, .cap = cap - 256};
    for (int i = 0; i < 4; i++)
        fz_rnd(&g);
    emits(&g, k_methods[fz_pick(&g, ARRAY_LEN(k_methods))]);
    emits(&g, " ");
    gen_path(&g);
    emits(&g, " HTTP/1.1\r\nHost: soak\r\n");
    if (fz_pick(&g, 3) == 0) {
        static const char *const cts[] = {"application/json", "application/json; charset=utf-8", "text/plain", "",
                                          "application/JSON", "multipart/form-data; boundary=x"};
        emits(&g, "Content-Type: ");
        emits(&g, cts[fz_pick(&g, ARRAY_LEN(cts))]);
        emits(&g, "\r\n");
    } else {
        emits(&g, "Content-Type: application/json\r\n");
    }
    if (fz_pick(&g, 4) == 0) {
        static const char *const auths[] = {"Bearer nope", "Basic eA==", "Bearer", ""};
        emits(&g, "Authorization: ");
        if (fz_pick(&g, 20) == 0 && admin_token) {
            emits(&g, "Bearer ");
            emits(&g, admin_token);
        } else {
            emits(&g, auths[fz_pick(&g, ARRAY_LEN(auths))]);
        }
        emits(&g, "\r\n");
    }
    if (fz_pick(&g, 4) == 0) {
        char key[64];
        int l = snprintf(key, sizeof key, "Idempotency-Key: %s\r\n",
                         (const char *[]){"k1", "", "a b", "\x7f", "0123456789012345678901234567890123456789"}[fz_pick(&g, 5)]);
        emit(&g, key, (size_t)l);
    }
    if (fz_pick(&g, 8) == 0) {
        emits(&g, "X-Junk: ");
        for (size_t i = 0, n = fz_pick(&g, 4000); i < n; i++)
            emit(&g, "j", 1);
        emits(&g, "\r\n");
    }
    /* the body, built apart to know its length */
    size_t head_len = g.n;
    fz_gen b = {.s = fz_rnd(&g) | 1, .p = body, .cap = sizeof body};
    if (fz_pick(&g, 3) != 0)
        gen_body(&b);
    char cl[48];
    int l = snprintf(cl, sizeof cl, "Content-Length: %zu\r\n\r\n", b.n);
    g.cap = cap;   /* the reserve is for this line */
    emit(&g, cl, (size_t)l);
    if (g.n + b.n > cap) {   /* cannot happen with MAX_REQ > 60 KiB + head; keep it framed anyway */
        g.n = head_len;
        emits(&g, "Content-Length: 0\r\n\r\n");
        return g.n;
    }
    emit(&g, body, b.n);
    return g.n;
}
