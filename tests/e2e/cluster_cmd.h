/* cluster_cmd.h - Redis commands for the cluster suites (test_api_cluster,
 * test_runtime_cluster, test_saga_cluster) through their cm_cluster client,
 * routed by a key's slot. Criterion asserts: a failed call fails the test. */
#ifndef TC_CLUSTER_CMD_H
#define TC_CLUSTER_CMD_H

#include "common/cluster.h"

/* A command of space-separated words on key's master (NULL key: any
 * master); asserts a non-error reply and returns it (caller frees). */
redisReply *tc_cmd(cm_cluster *cc, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* tc_cmd's reply as a number: an integer or integer-like string; nil is 0. */
long long tc_ll(cm_cluster *cc, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
