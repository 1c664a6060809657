/* log.h - JSON-lines logging to stderr.
 *
 * One line per call: {"level","ts","component","message"} plus
 * "checkout_id"/"event_id" when the caller knows them, plus extra key/values.
 * Each line is written with a single write(2), so lines of concurrent threads
 * and processes sharing a pipe never interleave. */
#ifndef CM_LOG_H
#define CM_LOG_H

enum cm_level { CM_DEBUG, CM_INFO, CM_WARN, CM_ERROR };

/* Sets the component name put on every line (copied). Reads LOG_LEVEL
 * (debug|info|warn|error, default info) from the environment. */
void cm_log_init(const char *component);
void cm_log_set_level(enum cm_level lvl);
int cm_log_enabled(enum cm_level lvl);

/* Logs a message with no ids. */
void cm_log(enum cm_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Logs a message with checkout_id and event_id (either may be NULL) and an
 * optional NULL-terminated extra list of string key/value pairs in `kv`. */
void cm_logx(enum cm_level lvl, const char *checkout_id, const char *event_id,
             const char *const *kv, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Logs like cm_log, at most once per second per key (NULL: the format
 * string is the key): repeats inside the second are counted, not written,
 * and the next line written for that key ends with "(repeated N times)". For
 * messages one fault can repeat per request (Redis down, a client flood).
 * Keys share a small table; two keys may collide and share one budget. */
void cm_log_limited(enum cm_level lvl, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
