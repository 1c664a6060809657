/* http.h - a tiny blocking HTTP/1.1 client for tests, over real sockets.
 *
 * A tf_http is one keep-alive connection to 127.0.0.1:port; requests are
 * sent as given (tf_http_send_raw: any bytes, for malformed requests) or
 * built (tf_http_do), and one response is read back: status line, headers,
 * and a body framed by Content-Length, chunked encoding, or the connection's
 * end. Every wait has a deadline; nothing here aborts.
 *
 * Usage:
 *     tf_http_resp r;
 *     if (tf_http_request(port, "POST", "/api/checkouts",
 *                         "Content-Type: application/json\r\n", body, &r) == 0)
 *         ... r.status, r.body, tf_http_header(&r, "Location") ...
 *     tf_http_resp_free(&r);
 *
 * This file does not use criterion: benches may link it too. */
#ifndef TF_HTTP_H
#define TF_HTTP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct tf_http {
    int fd;           /* -1 when closed */
    int port;
    char *buf;        /* bytes read but not consumed yet */
    size_t len, cap;
} tf_http;

typedef struct tf_http_resp {
    int status;       /* e.g. 202; 0 when no response */
    char *head;       /* raw status line + headers, NUL-terminated (owned) */
    char *body;       /* NUL-terminated (owned); may hold NULs before body_len */
    size_t body_len;
    bool closed;      /* the server closed the connection after it */
} tf_http_resp;

/* Connects to 127.0.0.1:port within timeout_ms. Returns 0 or -1 with errno. */
int tf_http_open(tf_http *h, int port, int timeout_ms);
void tf_http_close(tf_http *h);   /* safe on a closed or zeroed tf_http */

/* Writes len bytes as they are (the whole buffer, within timeout_ms).
 * Returns 0, or -1 with errno (EPIPE/ECONNRESET when the server closed). */
int tf_http_send_raw(tf_http *h, const void *data, size_t len, int timeout_ms);

/* Reads one response (head: a response to HEAD, which has no body).
 * Returns 0, or -1 when the connection closed or timed out first (errno
 * ETIMEDOUT or ECONNRESET). Free out with tf_http_resp_free either way. */
int tf_http_read(tf_http *h, tf_http_resp *out, bool head, int timeout_ms);

/* Sends "METHOD path HTTP/1.1" with Host, Content-Length when body is not
 * NULL, and extra_headers (complete "Name: value\r\n" lines, or NULL), then
 * reads the response. Returns 0 or -1 like tf_http_read. */
int tf_http_do(tf_http *h, const char *method, const char *path, const char *extra_headers,
               const char *body, size_t body_len, tf_http_resp *out, int timeout_ms);

/* One request on a fresh connection (10 s deadline); body is a C string or
 * NULL. Returns 0 or -1. */
int tf_http_request(int port, const char *method, const char *path, const char *extra_headers,
                    const char *body, tf_http_resp *out);

/* The value of header name (case-insensitive) copied into out, or NULL. */
const char *tf_http_header(const tf_http_resp *r, const char *name, char *out, size_t outlen);

void tf_http_resp_free(tf_http_resp *r);

#endif
