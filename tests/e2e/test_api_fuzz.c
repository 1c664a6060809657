/* test_api_fuzz.c - chorus-api under a stream of generated bad requests.
 *
 * At least 20,000 requests from a seeded generator (FUZZ_SEED overrides the
 * seed; it is printed so a failure can be replayed): random bytes, truncated
 * and mutated JSON, huge numbers, deep nesting, bad UTF-8, odd methods and
 * paths, abusive headers and framing, plus well-formed requests with random
 * values on every route; meanwhile slow senders hold connections that stop
 * mid-headers or mid-body. The guarantees checked:
 *   - no request is ever answered 5xx (Redis is up: nothing is the server's
 *     fault; the one exception is 505 to a request line naming an HTTP
 *     version other than 1.0/1.1, libmicrohttpd's RFC answer), every JSON answer is well-formed, errors in the
 *     {"error":{"code","message"}} shape;
 *   - a well-framed request always gets an answer;
 *   - afterwards a valid checkout is still answered 202 and lands in Redis,
 *     and the server exits 0 with a sanitizer-clean log (AddressSanitizer in
 *     the sanitized build). */
#include <criterion/criterion.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/e2e/api_env.h"
#include "tests/support/proc.h"

#define MIN_REQUESTS 20000
#define SLOW_SENDERS 64

static api_env E;

/* ---- a small deterministic generator ---- */

static unsigned long long g_rng;
static unsigned long long g_seed;   /* FUZZ_SEED of this run, for replaying a failure */

static unsigned long long rnd(void)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 2685821657736338717ULL;
}

static size_t pick(size_t n)
{
    return (size_t)(rnd() % n);
}

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        cr_assert_not_null(b->p);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void puts_(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void printf_(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void printf_(buf *b, const char *fmt, ...)
{
    char tmp[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    put(b, tmp, n < 0 ? 0 : (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void rand_bytes(buf *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = (char)rnd();
        put(b, &c, 1);
    }
}

/* ---- bodies ---- */

static const char *k_valid_bodies[] = {
    "{\"client_id\":\"fz\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}",
    "{\"client_id\":\"fz-2\",\"items\":[{\"product_id\":\"p1\",\"quantity\":3},{\"product_id\":\"p2\",\"quantity\":1}]}",
    "{\"name\":\"Widget\",\"price_cents\":100,\"available\":1000000}",
};

static const char *k_weird_values[] = {
    "99999999999999999999999999999", "-99999999999999999999", "1e309", "-1e309", "1.0", "0", "-0", "1e2",
    "null", "true", "[]", "{}", "\"\"", "\"\\u0000\"", "\"\\ud800\"", "\"\xff\xfe\"", "\"\xc3\x28\"",
    "\"\xe2\x82\"", "\"\xf0\x9f\x98\x80\"", "\"a b\"", "\"../../x\"", "\"%00\"", "NaN", "Infinity", "0x10",
    "1001", "1000", "1", "-1", "\"1\"", "18446744073709551616", "9223372036854775807", "-9223372036854775808",
};

/* A mutated JSON body. */
static void gen_body(buf *b)
{
    switch (pick(9)) {
    case 0: {   /* truncated valid body */
        const char *v = k_valid_bodies[pick(3)];
        put(b, v, pick(strlen(v)));
        break;
    }
    case 1: {   /* byte flips in a valid body */
        const char *v = k_valid_bodies[pick(3)];
        size_t at = b->n;
        puts_(b, v);
        for (int k = 0, m = 1 + (int)pick(4); k < m; k++)
            b->p[at + pick(strlen(v))] = (char)rnd();
        break;
    }
    case 2: {   /* a weird value in some field */
        const char *fields[] = {"client_id", "product_id", "quantity", "items", "name", "price_cents", "available"};
        const char *f = fields[pick(7)], *v = k_weird_values[pick(sizeof k_weird_values / sizeof *k_weird_values)];
        if (!strcmp(f, "product_id") || !strcmp(f, "quantity"))
            printf_(b, "{\"client_id\":\"c\",\"items\":[{\"product_id\":%s,\"quantity\":%s}]}",
                    !strcmp(f, "product_id") ? v : "\"p1\"", !strcmp(f, "quantity") ? v : "1");
        else if (!strcmp(f, "client_id") || !strcmp(f, "items"))
            printf_(b, "{\"client_id\":%s,\"items\":%s}", !strcmp(f, "client_id") ? v : "\"c\"",
                    !strcmp(f, "items") ? v : "[{\"product_id\":\"p1\",\"quantity\":1}]");
        else
            printf_(b, "{\"name\":%s,\"price_cents\":%s,\"available\":%s}", !strcmp(f, "name") ? v : "\"n\"",
                    !strcmp(f, "price_cents") ? v : "1", !strcmp(f, "available") ? v : "1");
        break;
    }
    case 3: {   /* deep nesting */
        size_t depth = 100 + pick(30000);
        const char *open = pick(2) ? "[" : "{\"a\":";
        for (size_t i = 0; i < depth && b->n < 60000; i++)
            puts_(b, open);
        break;
    }
    case 4:     /* random bytes */
        rand_bytes(b, pick(2000));
        break;
    case 5: {   /* a huge but valid-looking body */
        puts_(b, "{\"client_id\":\"");
        for (size_t i = 0, n = pick(70000); i < n; i++)
            put(b, "x", 1);
        puts_(b, "\",\"items\":[]}");
        break;
    }
    case 6: {   /* many lines */
        puts_(b, "{\"client_id\":\"c\",\"items\":[");
        for (size_t i = 0, n = pick(300); i < n; i++)
            printf_(b, "%s{\"product_id\":\"p%zu\",\"quantity\":%zu}", i ? "," : "", 1 + pick(2), pick(1500));
        puts_(b, "]}");
        break;
    }
    case 7:     /* duplicate keys, trailing garbage, empty */
        puts_(b, (const char *[]){"{\"client_id\":\"a\",\"client_id\":\"b\",\"items\":[]}", "{} {}", "", " ",
                                  "\xef\xbb\xbf{}", "{\"client_id\":\"c\",\"items\":[{\"product_id\":\"p1\",\"quantity\":1}]}garbage"}[pick(6)]);
        break;
    default:    /* valid */
        puts_(b, k_valid_bodies[pick(3)]);
        break;
    }
}

/* ---- requests ---- */

static const char *k_paths[] = {
    "/api/checkouts", "/api/commandes/clients/fz/checkout/choreo/", "/api/products/p1", "/api/products",
    "/api/checkouts/%s", "/api/event-store/streams/ecommerce.checkout.events/events", "/api/workers",
    "/api/dead-letters", "/api/dead-letters/%s/retry", "/health", "/ready", "/metrics",
    "/api/event-store/replay/checkout/%s", "/api/event-store/cqrs/orders-by-client/%s",
};

static const char *k_methods[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "TRACE", "get",
                                  "BREW", "X", "CONNECT"};

/* A path segment: mostly odd. */
static void gen_segment(buf *b)
{
    static const char *segs[] = {"", "x", "..", ".", "%00", "%2F", "%zz", "%", "a%20b", "\xc3\xa9", "\xff",
                                 "18446744073709551615-18446744073709551615", "1-1", "0-0", "-", "_", "chorus:x"};
    if (pick(4) == 0) {
        size_t n = pick(pick(10) ? 80 : 5000);
        for (size_t i = 0; i < n; i++)
            put(b, &"abcXYZ019-_.~%:@!$&'()*+,;="[pick(27)], 1);
    } else {
        puts_(b, segs[pick(sizeof segs / sizeof *segs)]);
    }
}

static void gen_path(buf *b)
{
    const char *t = k_paths[pick(sizeof k_paths / sizeof *k_paths)];
    for (const char *p = t; *p; p++) {
        if (p[0] == '%' && p[1] == 's') {
            gen_segment(b);
            p++;
        } else {
            put(b, p, 1);
        }
    }
    if (pick(3) == 0) {
        static const char *qs[] = {"?wait_ms=", "?count=", "?after=", "?count=5&after=", "?wait_ms=5&x=",
                                   "?&&&=", "?a=%ff"};
        puts_(b, qs[pick(sizeof qs / sizeof *qs)]);
        const char *vals[] = {"0", "-1", "5", "30001", "abc", "1-0", "99999999999999999999999", "", "1000", "1001",
                              "%00", "1.5"};
        puts_(b, vals[pick(sizeof vals / sizeof *vals)]);
    }
}

enum kind { K_BODY, K_ROUTE, K_VALID, K_HEADERS, K_RAW, K_FRAMING, K_COUNT };

/* Builds one request into b. Returns whether it is well framed (an answer
 * must come and the connection may be reused). */
static bool gen_request(buf *b, enum kind k)
{
    buf body = {0};
    bool framed = true;
    switch (k) {
    case K_BODY: {
        const char *targets[] = {"POST /api/checkouts", "POST /api/commandes/clients/fz/checkout/choreo/",
                                 "PUT /api/products/fz-p"};
        printf_(b, "%s HTTP/1.1\r\nHost: x\r\n", targets[pick(3)]);
        const char *cts[] = {"application/json", "application/json; charset=utf-8", "text/plain", "", "application/JSON"};
        printf_(b, "Content-Type: %s\r\n", pick(6) ? cts[0] : cts[pick(5)]);
        if (pick(2))
            printf_(b, "Authorization: Bearer %s\r\n", pick(2) ? AE_TOKEN : "nope");
        if (pick(3) == 0)
            printf_(b, "Idempotency-Key: fz-%zu\r\n", pick(50));
        gen_body(&body);
        printf_(b, "Content-Length: %zu\r\n\r\n", body.n);
        put(b, body.p ? body.p : "", body.n);
        /* over the cap the answer comes before the body is read and the
         * server closes: the client may see a reset instead of the 413 */
        framed = body.n <= 64 * 1024;
        break;
    }
    case K_ROUTE: {
        const char *m = k_methods[pick(sizeof k_methods / sizeof *k_methods)];
        if (!strcmp(m, "CONNECT") || !strcmp(m, "HEAD"))
            m = "GET";   /* CONNECT/HEAD framing differs: covered by K_FRAMING */
        printf_(b, "%s ", m);
        gen_path(b);
        puts_(b, " HTTP/1.1\r\nHost: x\r\n");
        if (pick(2)) {
            gen_body(&body);
            printf_(b, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", body.n);
            put(b, body.p ? body.p : "", body.n);
        } else {
            puts_(b, "\r\n");
        }
        /* a path with bytes HTTP does not allow may be refused at the door */
        for (size_t i = 0; i < b->n && b->p[i] != '\r'; i++)
            if ((unsigned char)b->p[i] < 0x21 && b->p[i] != ' ')
                framed = false;
        break;
    }
    case K_VALID: {
        int w = (int)pick(20);
        static const char *gets[] = {"/api/products", "/api/products/p1", "/api/workers", "/api/dead-letters",
                                     "/health", "/ready", "/metrics",
                                     "/api/event-store/streams/ecommerce.checkout.events/events?count=3",
                                     "/api/event-store/cqrs/orders-by-client/fz"};
        if (w < 8) {
            const char *v = k_valid_bodies[pick(2)];
            printf_(b, "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       "Content-Length: %zu\r\n\r\n%s", strlen(v), v);
        } else if (w < 10) {
            printf_(b, "GET /api/checkouts/01890000-0000-7000-8000-%012zu?wait_ms=%zu HTTP/1.1\r\nHost: x\r\n\r\n",
                    pick(1000), pick(15));
        } else {
            printf_(b, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", gets[pick(sizeof gets / sizeof *gets)]);
        }
        break;
    }
    case K_HEADERS: {
        printf_(b, "GET /api/products HTTP/1.1\r\nHost: x\r\n");
        switch (pick(6)) {
        case 0: puts_(b, "X-Big: "); for (size_t i = 0, n = 1000 + pick(200000); i < n; i++) put(b, "a", 1); puts_(b, "\r\n"); break;
        case 1: for (size_t i = 0, n = pick(3000); i < n; i++) printf_(b, "X-H%zu: v\r\n", i); break;
        case 2: puts_(b, "NoColonHere\r\n"); break;
        case 3: puts_(b, "Bad Name: v\r\n"); break;
        case 4: puts_(b, "X-Bin: "); rand_bytes(b, pick(200)); puts_(b, "\r\n"); break;
        default: puts_(b, "Authorization: Bearer \xff\xfe\r\nIdempotency-Key: \x01\r\n"); break;
        }
        puts_(b, "\r\n");
        framed = false;
        break;
    }
    case K_RAW:
        rand_bytes(b, pick(3000));
        puts_(b, "\r\n\r\n");
        framed = false;
        break;
    case K_FRAMING: {
        switch (pick(8)) {
        case 0: puts_(b, "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"); break;
        case 1: puts_(b, "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"); break;
        case 2: puts_(b, "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"); break;
        case 3: puts_(b, "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"); break;
        case 4: puts_(b, "GET /health HTTP/9.9\r\nHost: x\r\n\r\n"); break;
        case 5: puts_(b, "GET /health\r\n\r\n"); break;
        case 6: puts_(b, "HEAD /api/products HTTP/1.0\r\n\r\n"); break;
        default: puts_(b, "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n{\"client_id\":\"smuggled\"}\r\n"); break;
        }
        framed = false;
        break;
    }
    default:
        break;
    }
    free(body.p);
    return framed;
}

/* ---- the run ---- */

typedef struct stats {
    long sent, answered, unanswered, by_class[6], json_checked, versions;
} stats;

/* True if the request line names an HTTP version other than 1.0/1.1: the
 * one case answered 5xx, 505 HTTP Version Not Supported (RFC 9110 15.6.6),
 * by libmicrohttpd before the request reaches the API. */
static bool foreign_version(const buf *req)
{
    const char *eol = memchr(req->p, '\n', req->n);
    size_t n = eol ? (size_t)(eol - req->p) : req->n;
    if (n && req->p[n - 1] == '\r')
        n--;
    const char *sp = NULL;
    for (size_t i = 0; i < n; i++)
        if (req->p[i] == ' ')
            sp = req->p + i;
    if (!sp)
        return false;
    size_t vl = (size_t)(req->p + n - sp - 1);
    return !(vl == 8 && (!memcmp(sp + 1, "HTTP/1.1", 8) || !memcmp(sp + 1, "HTTP/1.0", 8)));
}

static void check_answer(const tf_http_resp *r, const buf *req, stats *st)
{
    st->answered++;
    if (r->status == 505 && foreign_version(req)) {
        st->versions++;
        return;
    }
    st->by_class[r->status / 100 < 6 ? r->status / 100 : 0]++;
    cr_assert(r->status < 500, "answered %d to a client request (FUZZ_SEED=%llu): %.300s\n--- request ---\n%.300s",
              r->status, g_seed, r->body, req->p);
    char ct[128];
    if (tf_http_header(r, "Content-Type", ct, sizeof ct) && !strncmp(ct, "application/json", 16) && r->body_len) {
        json_t *j = json_loadb(r->body, r->body_len, 0, NULL);
        cr_assert_not_null(j, "a JSON answer that is not JSON: %.300s", r->body);
        if (r->status >= 400) {
            json_t *e = json_object_get(j, "error");
            cr_assert(json_is_string(json_object_get(e, "code")) && json_is_string(json_object_get(e, "message")),
                      "error shape: %.300s", r->body);
        }
        json_decref(j);
        st->json_checked++;
    }
}

/* Opens the slow senders: each stops mid-headers or mid-body and stays. */
static void open_slow(tf_http *slow, int n)
{
    for (int i = 0; i < n; i++) {
        cr_assert_eq(tf_http_open(&slow[i], E.port, 5000), 0);
        const char *parts[] = {"POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Type: applica",
                               "POST /api/checkouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               "Content-Length: 500\r\n\r\n{\"client_id\":\"slow\",\"items\":[",
                               "GE", "PUT /api/products/p1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"na"};
        const char *p = parts[i % 4];
        cr_assert_eq(tf_http_send_raw(&slow[i], p, strlen(p), 5000), 0);
    }
}

Test(api_fuzz, twenty_thousand_bad_requests_never_break_the_server, .timeout = 120)
{
    const char *extra[] = {"API_CONN_TIMEOUT_S=5", "LOG_LEVEL=warn", NULL};
    ae_setup(&E, NULL, AE_TOKEN, extra);
    ae_product(&E, "p1", 100, 100000000);
    ae_product(&E, "p2", 250, 100000000);
    static const char *groups[] = {"choreo-reservation", "choreo-order", "choreo-compensation",
                                   "choreo-notification", "choreo-audit", "choreo-cqrs"};
    for (int i = 0; i < 6; i++)   /* /ready is then 200: any 5xx is a fault */
        freeReplyObject(ae_cmd(&E, "XGROUP CREATE " AE_BUS " %s 0 MKSTREAM", groups[i]));
    const char *seed = getenv("FUZZ_SEED");
    g_rng = seed ? strtoull(seed, NULL, 10) : (unsigned long long)tf_now_ms() * 2654435761ULL;
    if (!g_rng)
        g_rng = 1;
    g_seed = g_rng;
    fprintf(stderr, "api_fuzz: FUZZ_SEED=%llu\n", g_seed);

    tf_http slow[SLOW_SENDERS];
    open_slow(slow, SLOW_SENDERS);

    stats st = {0};
    tf_http h = {.fd = -1};
    buf req = {0};
    long long t0 = tf_now_ms();
    while (st.sent < MIN_REQUESTS) {
        enum kind k = (enum kind)pick(K_COUNT);
        if (k == K_RAW && pick(2))
            k = K_BODY;   /* random bytes are cheap to refuse; weigh JSON more */
        req.n = 0;
        bool framed = gen_request(&req, k);
        if (!framed && h.fd >= 0)
            tf_http_close(&h);   /* abuse goes on its own connection */
        if (h.fd < 0)
            cr_assert_eq(tf_http_open(&h, E.port, 5000), 0, "the server stopped accepting connections");
        st.sent++;
        tf_http_resp r;
        bool head = !strncmp(req.p, "HEAD ", 5);
        int rc = tf_http_send_raw(&h, req.p, req.n, 5000);
        if (rc == 0)
            rc = tf_http_read(&h, &r, head, framed ? 10000 : 2000);
        else
            memset(&r, 0, sizeof r);
        if (rc == 0 && r.status > 0) {
            check_answer(&r, &req, &st);
        } else {
            cr_assert(!framed, "no answer to a well-framed request (FUZZ_SEED=%llu):\n%.400s", g_seed, req.p);
            st.unanswered++;
        }
        if (!framed || rc != 0 || r.closed)
            tf_http_close(&h);
        tf_http_resp_free(&r);
    }
    tf_http_close(&h);
    long long took = tf_now_ms() - t0;
    fprintf(stderr,
            "api_fuzz: %ld requests in %lld ms: %ld answered (2xx %ld, 4xx %ld, JSON checked %ld, 505 to a "
            "foreign HTTP version %ld), %ld refused at the door without an answer\n",
            st.sent, took, st.answered, st.by_class[2], st.by_class[4], st.json_checked, st.versions, st.unanswered);
    cr_assert_eq(st.by_class[5], 0);

    /* still serving, with the slow senders holding their connections */
    char id[80];
    long long bus_before = 0;
    redisReply *x = ae_cmd(&E, "XLEN " AE_BUS);
    bus_before = x->integer;
    freeReplyObject(x);
    ae_checkout(&E, "after-fuzz", "p1", 2, id);
    cr_assert_eq(ae_int(&E, "LLEN chorus:h:checkout:%s", id), 1);
    cr_assert_eq(ae_int(&E, "XLEN " AE_BUS), bus_before + 1);
    tf_http_resp r;
    ae_req(&E, "GET", "/health", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    tf_http_resp_free(&r);
    for (int i = 0; i < SLOW_SENDERS; i++)
        tf_http_close(&slow[i]);
    free(req.p);
    ae_teardown(&E);
}

Test(api_fuzz, slow_senders_are_cut_off_after_the_connection_timeout, .timeout = 60)
{
    const char *extra[] = {"API_CONN_TIMEOUT_S=1", NULL};
    ae_setup(&E, NULL, AE_TOKEN, extra);
    tf_http slow[8];
    open_slow(slow, 8);
    long long t0 = tf_now_ms();
    for (int i = 0; i < 8; i++) {
        tf_http_resp r;
        /* the server closes (an answer or not): the read ends well before 10 s */
        tf_http_read(&slow[i], &r, false, 10000);
        tf_http_resp_free(&r);
        tf_http_close(&slow[i]);
    }
    long long took = tf_now_ms() - t0;
    cr_assert(took < 6000, "stalled connections held for %lld ms with a 1 s timeout", took);
    ae_teardown(&E);
}
