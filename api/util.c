/* util.c - small validation and JSON helpers shared by the handlers. */
#include "api/api_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* True if s[0..n) is 1..20 digits whose value fits in 64 bits. */
static bool u64_digits(const char *s, size_t n)
{
    if (n == 0 || n > 20)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    if (n < 20)
        return true;
    return memcmp(s, "18446744073709551615", 20) <= 0;
}

bool api_stream_id_valid(const char *s)
{
    if (!s)
        return false;
    const char *dash = strchr(s, '-');
    if (!dash)
        return u64_digits(s, strlen(s));
    return u64_digits(s, (size_t)(dash - s)) && u64_digits(dash + 1, strlen(dash + 1));
}

void api_json_num_or_str(cm_buf *b, const char *s, size_t n)
{
    if (!s)
        cm_buf_puts(b, "null");
    else if (n < 64 && cm_json_number(s, n))
        cm_buf_put(b, s, n);
    else
        cm_buf_put_json_str(b, s, n);
}

void api_json_str_or_null(cm_buf *b, const char *s, size_t n)
{
    if (!s)
        cm_buf_puts(b, "null");
    else
        cm_buf_put_json_str(b, s, n);
}

const redisReply *api_kv_field(const redisReply *kv, const char *name)
{
    for (size_t i = 0; kv && kv->type == REDIS_REPLY_ARRAY && i + 1 < kv->elements; i += 2) {
        const redisReply *k = kv->element[i];
        if (cm_reply_is_str(k) && !strcmp(k->str, name))
            return kv->element[i + 1];
    }
    return NULL;
}

/* Splits a valid stream id into its two parts ("5" is 5-0). */
static void id_parts(const char *s, unsigned long long *ms, unsigned long long *seq)
{
    char *end = NULL;
    *ms = strtoull(s, &end, 10);
    *seq = end && *end == '-' ? strtoull(end + 1, NULL, 10) : 0;
}

int api_stream_id_cmp(const char *a, const char *b)
{
    unsigned long long am, as, bm, bs;
    id_parts(a, &am, &as);
    id_parts(b, &bm, &bs);
    if (am != bm)
        return am < bm ? -1 : 1;
    return as < bs ? -1 : as > bs;
}

