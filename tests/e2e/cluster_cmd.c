/* cluster_cmd.c - see cluster_cmd.h. */
#include "tests/e2e/cluster_cmd.h"

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static redisReply *run(cm_cluster *cc, const char *key, char *text)
{
    cm_argv a = {0};
    for (char *save = NULL, *t = strtok_r(text, " ", &save); t; t = strtok_r(NULL, " ", &save))
        cm_argv_adds(&a, t);
    free(text);
    redisReply *r = cm_cluster_argv(cc, key ? cm_key_slot(key, strlen(key)) : CM_SLOT_ANY, &a);
    cm_argv_free(&a);
    cr_assert_not_null(r, "redis: %s", cm_cluster_errstr(cc));
    cr_assert_neq(r->type, REDIS_REPLY_ERROR, "redis: %s", r->str);
    return r;
}

redisReply *tc_cmd(cm_cluster *cc, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *text = NULL;
    cr_assert_neq(vasprintf(&text, fmt, ap), -1);
    va_end(ap);
    return run(cc, key, text);
}

long long tc_ll(cm_cluster *cc, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *text = NULL;
    cr_assert_neq(vasprintf(&text, fmt, ap), -1);
    va_end(ap);
    redisReply *r = run(cc, key, text);
    long long v = cm_reply_ll(r, r->type == REDIS_REPLY_NIL ? 0 : -1);
    freeReplyObject(r);
    return v;
}
