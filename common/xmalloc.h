/* xmalloc.h - allocation that never returns NULL.
 *
 * Out-of-memory is not an input error: these abort with a message. Everything
 * from outside the process (HTTP, stream entries, env) is validated elsewhere
 * and never reaches abort(). */
#ifndef CM_XMALLOC_H
#define CM_XMALLOC_H

#include <stddef.h>

void *cm_xmalloc(size_t n);              /* caller frees with free() */
void *cm_xcalloc(size_t nmemb, size_t n);
void *cm_xrealloc(void *p, size_t n);
char *cm_xstrdup(const char *s);         /* cm_xstrdup(NULL) returns NULL */
char *cm_xstrndup(const char *s, size_t n);
/* printf into a new string; caller frees. */
char *cm_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
