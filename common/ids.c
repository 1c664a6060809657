/* ids.c - UUIDv7 generation and deterministic derived ids. */
#include "common/ids.h"
#include "common/clock.h"

#include <pthread.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

static void format_uuid(const uint8_t b[16], char out[CM_UUID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

/* Per-thread state: last timestamp and a counter so ids from one thread are
 * monotonic even within one millisecond (RFC 9562 method 1, 12-bit counter). */
static __thread uint64_t t_last_ms;
static __thread uint16_t t_counter;

void cm_uuid7(char out[CM_UUID_LEN + 1])
{
    uint8_t b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
        randombytes_buf(b, sizeof b);
    uint64_t ms = (uint64_t)cm_wall_ms();
    if (ms <= t_last_ms) {
        ms = t_last_ms;
        t_counter++;
        if (t_counter > 0x0FFF) {   /* counter overflow: borrow the next ms */
            ms = ++t_last_ms;
            t_counter = 0;
        }
    } else {
        t_counter = (uint16_t)((b[6] << 8 | b[7]) & 0x01FF); /* random start, headroom */
    }
    t_last_ms = ms;
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    b[6] = (uint8_t)(0x70 | ((t_counter >> 8) & 0x0F));
    b[7] = (uint8_t)(t_counter & 0xFF);
    b[8] = (uint8_t)(0x80 | (b[8] & 0x3F));
    format_uuid(b, out);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void cm_uuid_derive(const char *parent_id, const char *tag, char out[CM_UUID_LEN + 1])
{
    uint8_t h[16];
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, sizeof h);
    crypto_generichash_update(&st, (const unsigned char *)parent_id, strlen(parent_id));
    crypto_generichash_update(&st, (const unsigned char *)"\0", 1);
    crypto_generichash_update(&st, (const unsigned char *)tag, strlen(tag));
    crypto_generichash_final(&st, h, sizeof h);
    /* keep the parent's timestamp so derived ids sort near their cause */
    if (cm_uuid_valid(parent_id)) {
        for (int i = 0, j = 0; i < 6; i++, j += 2) {
            if (j == 8)
                j++;  /* skip the dash after 8 hex digits */
            h[i] = (uint8_t)(hexval(parent_id[j]) << 4 | hexval(parent_id[j + 1]));
        }
    }
    h[6] = (uint8_t)(0x70 | (h[6] & 0x0F));
    h[8] = (uint8_t)(0x80 | (h[8] & 0x3F));
    format_uuid(h, out);
}

bool cm_uuid_valid(const char *s)
{
    if (!s || strlen(s) != CM_UUID_LEN)
        return false;
    for (int i = 0; i < CM_UUID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (hexval(s[i]) < 0) {
            return false;
        }
    }
    return true;
}

bool cm_id_valid(const char *s, size_t n, size_t max)
{
    if (!s || n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

bool cm_stream_id_parse(const char *s, unsigned long long *ms, unsigned long long *seq)
{
    char *end;
    if (!s || *s < '0' || *s > '9')
        return false;
    *ms = strtoull(s, &end, 10);
    if (*end != '-' || end[1] < '0' || end[1] > '9')
        return false;
    *seq = strtoull(end + 1, &end, 10);
    return *end == '\0';
}
