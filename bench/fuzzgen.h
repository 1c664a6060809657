/* fuzzgen.h - generated bad (and some good) HTTP requests for chorus-api.
 *
 * fz_request(seed, n, ...) is a pure function of (seed, n): a soak can send
 * millions of requests and print again the one that got a bad answer, from
 * its number alone. Every request is framed (an exact Content-Length, HTTP/1.1
 * request line), so it gets an answer on a keep-alive connection; what
 * cannot be framed (random bytes, broken framing, slow senders) is the
 * caller's business. A tiny xorshift generator is exported for that. */
#ifndef BENCH_FUZZGEN_H
#define BENCH_FUZZGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The largest request fz_request writes: head (<= ~14 KiB: long segments,
 * a junk header) + body (<= 60 KiB), with room to spare. */
#define FZ_MAX_REQUEST (128 * 1024)

/* A generator state and the buffer it writes into (for fz_request's own use;
 * callers need only .s for fz_rnd / fz_pick). */
typedef struct fz_gen {
    uint64_t s;          /* xorshift state, never 0 */
    char *p;             /* output */
    size_t n, cap;
    bool full;           /* something did not fit: cut short */
} fz_gen;

/* The next 64 random bits of g (xorshift64). */
uint64_t fz_rnd(fz_gen *g);
/* A number in [0, n) (0 when n is 0). */
size_t fz_pick(fz_gen *g, size_t n);

/* Writes request number seq of the sequence seed into buf and returns its
 * length; 0 when cap < FZ_MAX_REQUEST. admin_token (may be NULL) is sent as
 * the bearer token in about 1 in 80 requests, so admin routes are reached. */
size_t fz_request(uint64_t seed, uint64_t seq, const char *admin_token, char *buf, size_t cap);

#endif
