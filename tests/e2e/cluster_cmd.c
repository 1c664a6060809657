/* cluster_cmd.c - see cluster_cmd.h. */
#include "tests/e2e/cluster_cmd.h"

#include "common/names.h"

#include <criterion/criterion.h>
#include <jansson.h>
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

void tc_append_to_partition(es_store *s, int p, const char *type, const char *data_json, const char *producer,
                            char agg[37], es_append_res *res)
{
    json_error_t jerr;
    json_t *data = json_loads(data_json, 0, &jerr);
    cr_assert_not_null(data, "bad test data %s", data_json);
    cm_partition_id(p, agg);
    es_new_event ev = {.type = type, .data = data};
    es_append_req req = {.aggregate = "checkout", .aggregate_id = agg, .producer = producer,
                         .expected_version = ES_ANY_VERSION, .events = &ev, .n = 1};
    int rc = es_append(s, &req, res);
    json_decref(data);
    cr_assert_eq(rc, ES_OK, "es_append: %s", es_store_errstr(s));
}

long long tc_pending_all(cm_cluster *cc, const char *bus, const char *group)
{
    long long n = 0;
    for (int p = 0; p < cm_partitions(); p++) {
        cm_key b = cm_key_bus(bus, p);
        cm_key streams[2] = {b, cm_key_retry(b.s, group)};
        for (int k = 0; k < 2; k++) {
            redisReply *r = tc_cmd(cc, streams[k].s, "XPENDING %s %s", streams[k].s, group);
            if (r->type == REDIS_REPLY_ARRAY)
                n += cm_reply_ll(cm_reply_elem(r, 0), 0);
            freeReplyObject(r);
        }
    }
    return n;
}
