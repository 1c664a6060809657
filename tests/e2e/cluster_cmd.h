/* cluster_cmd.h - Redis commands for the cluster suites (test_api_cluster,
 * test_runtime_cluster(_frozen), test_saga_cluster) through their cm_cluster
 * client, routed by a key's slot, and what the worker suites share.
 * Criterion asserts: a failed call fails the test. */
#ifndef TC_CLUSTER_CMD_H
#define TC_CLUSTER_CMD_H

#include "common/cluster.h"
#include "event_store/store.h"

/* A command of space-separated words on key's master (NULL key: any
 * master); asserts a non-error reply and returns it (caller frees). */
redisReply *tc_cmd(cm_cluster *cc, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* tc_cmd's reply as a number: an integer or integer-like string; nil is 0. */
long long tc_ll(cm_cluster *cc, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Appends one event of type with the JSON data_json, as producer, to a new
 * checkout of partition p through s; asserts it went in; the checkout id
 * into agg, the event's position into *res. */
void tc_append_to_partition(es_store *s, int p, const char *type, const char *data_json, const char *producer,
                            char agg[37], es_append_res *res);

/* Pending entries of group over every partition's bus and redelivery stream. */
long long tc_pending_all(cm_cluster *cc, const char *bus, const char *group);

#endif
