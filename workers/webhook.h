/* webhook.h - a minimal HTTP POST client for the notification worker, on
 * libevent's HTTP client (a private event_base per call, so it never touches
 * anyone else's loop). Plain http:// only. */
#ifndef WK_WEBHOOK_H
#define WK_WEBHOOK_H

#include <stddef.h>

typedef struct wk_webhook {
    char host[256];      /* name or IPv4 address, as given */
    int port;            /* 80 unless given */
    char path[1024];     /* starts with '/', query included */
} wk_webhook;

/* Parses url of the form http://host[:port][/path]. Returns 0, or -1 with a
 * message in err saying what is wrong (https, userinfo, bad port, ...). */
int wk_webhook_parse(const char *url, wk_webhook *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* POSTs body (JSON) to w with headers Content-Type: application/json and
 * Idempotency-Key: idem_key, waiting at most timeout_ms. Returns the HTTP
 * status (any, 2xx or not), or -1 with err when no answer came (refused,
 * timed out, reset). */
int wk_webhook_post(const wk_webhook *w, const char *body, size_t len, const char *idem_key, int timeout_ms,
                    char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
