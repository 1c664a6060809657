/* cluster_fixture.h - a private Redis Cluster per test: 3 masters + 3
 * replicas on loopback.
 *
 * tf_cluster_start starts six tf_redis servers (tests/support/redis_fixture.h:
 * temp dir, bind-probed free port, timeout(1) wrapper, killed by PID) with
 * `cluster-enabled yes`, a bus port probed the same way (`cluster-port`: the
 * default port+10000 is past 65535 for most ephemeral ports) and a short
 * `cluster-node-timeout` (2000 ms, so a killed master is failed over in
 * about 3 s). It then runs `redis-cli --cluster create ... --cluster-replicas 1
 * --cluster-yes` and waits until every node reports cluster_state:ok, sees
 * all 16384 slots served and the same owner for each, and every replica's
 * link to its master is up. About 2 s in all.
 *
 * Usage:
 *     tf_cluster cl;
 *     cr_assert_eq(tf_cluster_start(&cl, NULL), 0);
 *     ... cl.url is "redis-cluster://127.0.0.1:<p0>,...", a REDIS_URL ...
 *     tf_cluster_stop(&cl);
 *
 * On any failure the helpers print why and dump every node's log. This file
 * does not use criterion: benches may link it too. */
#ifndef TF_CLUSTER_FIXTURE_H
#define TF_CLUSTER_FIXTURE_H

#include "tests/support/redis_fixture.h"

#include <stdbool.h>

#define TF_CLUSTER_NODES 6
#define TF_CLUSTER_NODE_TIMEOUT_MS 2000

typedef struct tf_cluster {
    tf_redis node[TF_CLUSTER_NODES];   /* node[i].pid == 0 once stopped or killed */
    char id[TF_CLUSTER_NODES][41];     /* CLUSTER MYID of each node */
    char url[TF_CLUSTER_NODES * 24 + 32];   /* redis-cluster://127.0.0.1:p0,...,127.0.0.1:p5 */
    char create_log[300];              /* redis-cli --cluster create output */
} tf_cluster;

/* Starts the six servers (extra_conf: more redis.conf lines, may be NULL),
 * creates the cluster and waits until it is whole (see above; 30 s at
 * most). Returns 0, or -1 after dumping the logs; nothing is left running
 * then. */
int tf_cluster_start(tf_cluster *cl, const char *extra_conf) __attribute__((warn_unused_result));

/* Stops every node still running and removes their dirs. Safe on a stopped
 * or zeroed fixture. */
void tf_cluster_stop(tf_cluster *cl);

/* Prints the redis-cli output and every node's log to stderr. */
void tf_cluster_dump_logs(const tf_cluster *cl);

/* Waits until every running node says cluster_state:ok with all slots
 * served, all running nodes agree on every slot's master, and every running
 * replica's master link is up. Returns 0, or -1 after timeout_ms (with the
 * reason and the logs on stderr). */
int tf_cluster_wait_ok(tf_cluster *cl, int timeout_ms) __attribute__((warn_unused_result));

/* True once master m's replica has acknowledged m's whole replication
 * offset (INFO replication: slave0's offset at least master_repl_offset);
 * false after timeout_ms or when m cannot be asked. */
bool tf_cluster_replica_caught_up(const tf_cluster *cl, int m, int timeout_ms);

/* Index of the node that a running node says is slot's master (-1 if
 * unknown). */
int tf_cluster_master_of(const tf_cluster *cl, int slot);

/* Index of a running replica of master m (-1 if none). */
int tf_cluster_replica_of(const tf_cluster *cl, int m);

/* True if running node i says it is a master. */
bool tf_cluster_is_master(const tf_cluster *cl, int i);

/* Index of the node listening on port (-1 if none). */
int tf_cluster_node_by_port(const tf_cluster *cl, int port);

/* Moves slot from its master to master dst: SETSLOT IMPORTING on dst,
 * MIGRATING on the source, MIGRATE of every key in it; when finish, then
 * SETSLOT NODE dst on every running master (the slot is dst's: clients get
 * MOVED). Without finish the slot stays migrating (clients asking the
 * source for a moved key get ASK). Returns 0 or -1 with the reason on
 * stderr. */
int tf_cluster_migrate_slot(tf_cluster *cl, int slot, int dst, bool finish)
    __attribute__((warn_unused_result));

/* Runs CLUSTER FAILOVER on replica r and waits (10 s at most) until r is a
 * master and the cluster is whole again. Returns 0 or -1. */
int tf_cluster_failover(tf_cluster *cl, int r) __attribute__((warn_unused_result));

#endif
