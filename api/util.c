/* util.c - small validation and JSON helpers shared by the handlers. */
#include "api/api_int.h"

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
