/* buf.h - a growable byte buffer, for building JSON, log lines and Redis
 * arguments without a printf per byte. The buffer owns its bytes; data is
 * always NUL-terminated. */
#ifndef CM_BUF_H
#define CM_BUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct cm_buf {
    char *data;  /* NUL-terminated; NULL until the first append */
    size_t len;  /* bytes used, without the NUL */
    size_t cap;  /* bytes allocated */
} cm_buf;

#define CM_BUF_INIT {NULL, 0, 0}

void cm_buf_put(cm_buf *b, const void *p, size_t n);
void cm_buf_puts(cm_buf *b, const char *s);
void cm_buf_putc(cm_buf *b, char c);
void cm_buf_printf(cm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included; invalid UTF-8 bytes
 * are replaced by U+FFFD so the output is always valid JSON. */
void cm_buf_put_json_str(cm_buf *b, const char *s, size_t n);
/* True if s[0..n) follows JSON's number grammar,
 * -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? — so it can be embedded in
 * JSON as is (strtod alone takes " 5", ".5", "0x10"). */
bool cm_json_number(const char *s, size_t n);
void cm_buf_reset(cm_buf *b);            /* len = 0, keeps the memory */
void cm_buf_free(cm_buf *b);             /* frees the bytes; b is reusable */
char *cm_buf_steal(cm_buf *b);           /* returns data (caller frees), empties b */

#endif
