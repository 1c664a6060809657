/* cluster_fixture.c - six tf_redis servers made into a Redis Cluster.
 *
 * Each node is an ordinary tf_redis (redis_fixture.c does the temp dir,
 * port probing, wrapper, kill by PID and log); this file adds the cluster
 * settings, `redis-cli --cluster create`, and the checks that the cluster is
 * whole. Questions to the nodes go over a fresh short-timeout connection
 * each time (node_cmd): a fixture polls a few times, and a killed node must
 * answer "no reply", not abort the test. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tests/support/cluster_fixture.h"
#include "tests/support/proc.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

enum {
    NODE_TRIES = 3,            /* bus ports tried per node */
    CREATE_TIMEOUT_MS = 40000, /* redis-cli --cluster create */
    WHOLE_TIMEOUT_MS = 30000,  /* after create, until every check passes */
    FAILOVER_TIMEOUT_MS = 10000,
    NODE_CMD_MS = 2000,
};

static bool running(const tf_cluster *cl, int i)
{
    return cl->node[i].pid > 0;
}

/* One command to node i on a fresh connection. Returns the reply (caller
 * frees; NULL if the node did not answer). */
__attribute__((format(printf, 3, 4))) static redisReply *node_cmd(const tf_cluster *cl, int i,
                                                                  const char *fmt, ...)
{
    struct timeval tv = {.tv_sec = NODE_CMD_MS / 1000, .tv_usec = (NODE_CMD_MS % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", cl->node[i].port, tv);
    if (!c || c->err || redisSetTimeout(c, tv) != REDIS_OK) {
        redisFree(c);
        return NULL;
    }
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

/* Runs a command on node i that must answer +OK. Returns 0 or -1 (why on
 * stderr). */
__attribute__((format(printf, 3, 4))) static int node_ok(const tf_cluster *cl, int i, const char *fmt, ...)
{
    struct timeval tv = {.tv_sec = NODE_CMD_MS / 1000, .tv_usec = (NODE_CMD_MS % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", cl->node[i].port, tv);
    if (!c || c->err || redisSetTimeout(c, tv) != REDIS_OK) {
        fprintf(stderr, "tf_cluster: node %d (port %d) unreachable\n", i, cl->node[i].port);
        redisFree(c);
        return -1;
    }
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    int rc = r && r->type == REDIS_REPLY_STATUS && !strcmp(r->str, "OK") ? 0 : -1;
    if (rc != 0)
        fprintf(stderr, "tf_cluster: node %d (port %d): \"%s\" answered %s\n", i, cl->node[i].port, fmt,
                r && r->str ? r->str : c->errstr);
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return rc;
}

/* The value of a field of node i's CLUSTER INFO (section NULL) or INFO
 * section ("" if none). */
static void node_info(const tf_cluster *cl, int i, const char *section, const char *field, char *out,
                      size_t outlen)
{
    out[0] = '\0';
    redisReply *r = section ? node_cmd(cl, i, "INFO %s", section) : node_cmd(cl, i, "CLUSTER INFO");
    if (r && r->type == REDIS_REPLY_STRING)
        tf_info_field(r->str, field, out, outlen);
    if (r)
        freeReplyObject(r);
}

/* Starts node i with the cluster settings and a probed bus port. */
static int start_node(tf_cluster *cl, int i, const char *extra)
{
    for (int attempt = 0; attempt < NODE_TRIES; attempt++) {
        int bus = tf_free_port();
        if (bus < 0)
            return -1;
        char *conf = NULL;
        if (asprintf(&conf,
                     "cluster-enabled yes\n"
                     "cluster-config-file nodes.conf\n"
                     "cluster-node-timeout %d\n"
                     "cluster-port %d\n"
                     "repl-diskless-sync-delay 0\n"
                     "%s\n",
                     TF_CLUSTER_NODE_TIMEOUT_MS, bus, extra ? extra : "") < 0)
            return -1;
        int rc = tf_redis_start(&cl->node[i], conf);
        free(conf);
        if (rc == 0)
            return 0;
        fprintf(stderr, "tf_cluster: node %d did not start (bus port %d), trying another\n", i, bus);
    }
    return -1;
}

/* redis-cli --cluster create over the six nodes. */
static int create(tf_cluster *cl)
{
    char addr[TF_CLUSTER_NODES][32];
    const char *argv[TF_CLUSTER_NODES + 10];
    int n = 0;
    argv[n++] = "redis-cli";
    argv[n++] = "--cluster";
    argv[n++] = "create";
    for (int i = 0; i < TF_CLUSTER_NODES; i++) {
        snprintf(addr[i], sizeof addr[i], "127.0.0.1:%d", cl->node[i].port);
        argv[n++] = addr[i];
    }
    argv[n++] = "--cluster-replicas";
    argv[n++] = "1";
    argv[n++] = "--cluster-yes";
    argv[n] = NULL;
    snprintf(cl->create_log, sizeof cl->create_log, "%s/cluster-create.log", cl->node[0].dir);
    pid_t pid = tf_spawn(argv, NULL, cl->create_log);
    if (pid < 0) {
        fprintf(stderr, "tf_cluster: cannot run redis-cli: %s\n", strerror(errno));
        return -1;
    }
    int st = 0;
    if (tf_wait_exit(pid, CREATE_TIMEOUT_MS, &st) != 0) {
        fprintf(stderr, "tf_cluster: redis-cli --cluster create still running after %d ms\n",
                CREATE_TIMEOUT_MS);
        tf_kill(pid, SIGKILL);
        tf_wait_exit(pid, 5000, NULL);
        return -1;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "tf_cluster: redis-cli --cluster create failed (status 0x%x)\n", st);
        return -1;
    }
    return 0;
}

/* Fills port[slot] with the master's port for every slot in node i's
 * CLUSTER SLOTS (0 where none). Returns 0, or -1 if it did not answer. */
static int slot_ports(const tf_cluster *cl, int i, int *port)
{
    redisReply *r = node_cmd(cl, i, "CLUSTER SLOTS");
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        if (r)
            freeReplyObject(r);
        return -1;
    }
    memset(port, 0, sizeof(int) * 16384);
    for (size_t k = 0; k < r->elements; k++) {
        const redisReply *e = r->element[k];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[2]->type != REDIS_REPLY_ARRAY ||
            e->element[2]->elements < 2)
            continue;
        long long lo = e->element[0]->integer, hi = e->element[1]->integer;
        for (long long s = lo; s <= hi && s < 16384; s++)
            port[s] = (int)e->element[2]->element[1]->integer;
    }
    freeReplyObject(r);
    return 0;
}

/* True if node i's CLUSTER NODES lists replica j as a replica of master m
 * (a master learns its replicas by gossip, a moment after they sync; a
 * manual failover before that is ignored by the master). */
static bool sees_replica(const tf_cluster *cl, int i, int j, int m)
{
    redisReply *r = node_cmd(cl, i, "CLUSTER NODES");
    bool ok = false;
    const char *line = r && r->type == REDIS_REPLY_STRING ? r->str : NULL;
    while (line && *line) {
        size_t n = strcspn(line, "\n");
        if (n > 40 && !strncmp(line, cl->id[j], 40)) {
            char buf[1024];
            snprintf(buf, sizeof buf, "%.*s", (int)(n < sizeof buf - 1 ? n : sizeof buf - 1), line);
            ok = strstr(buf, "slave") && strstr(buf, cl->id[m]);
            break;
        }
        line = line[n] ? line + n + 1 : NULL;
    }
    if (r)
        freeReplyObject(r);
    return ok;
}

/* One check of tf_cluster_wait_ok; on false, why says what is missing. */
static bool whole(const tf_cluster *cl, char *why, size_t whylen)
{
    static int ref[16384], cur[16384];
    int refnode = -1;
    int master_of[TF_CLUSTER_NODES];   /* running replicas: their master; else -1 */
    for (int i = 0; i < TF_CLUSTER_NODES; i++) {
        master_of[i] = -1;
        if (!running(cl, i))
            continue;
        char state[32], slots_ok[32];
        node_info(cl, i, NULL, "cluster_state", state, sizeof state);
        node_info(cl, i, NULL, "cluster_slots_ok", slots_ok, sizeof slots_ok);
        if (strcmp(state, "ok") != 0 || strcmp(slots_ok, "16384") != 0) {
            snprintf(why, whylen, "node %d: cluster_state %s, cluster_slots_ok %s", i, state, slots_ok);
            return false;
        }
        if (slot_ports(cl, i, refnode < 0 ? ref : cur) != 0) {
            snprintf(why, whylen, "node %d: no CLUSTER SLOTS", i);
            return false;
        }
        if (refnode < 0) {
            refnode = i;
            for (int s = 0; s < 16384; s++) {
                int owner = tf_cluster_node_by_port(cl, ref[s]);
                if (owner < 0 || !running(cl, owner)) {
                    snprintf(why, whylen, "slot %d: master port %d is not a running node", s, ref[s]);
                    return false;
                }
            }
        } else if (memcmp(ref, cur, sizeof ref) != 0) {
            snprintf(why, whylen, "nodes %d and %d disagree on the slot map", refnode, i);
            return false;
        }
        char role[16], link[16], port[16];
        node_info(cl, i, "replication", "role", role, sizeof role);
        if (!strcmp(role, "slave")) {
            node_info(cl, i, "replication", "master_link_status", link, sizeof link);
            node_info(cl, i, "replication", "master_port", port, sizeof port);
            if (strcmp(link, "up") != 0) {
                snprintf(why, whylen, "replica %d: master link %s", i, link);
                return false;
            }
            master_of[i] = tf_cluster_node_by_port(cl, atoi(port));
        }
    }
    for (int i = 0; i < TF_CLUSTER_NODES; i++)
        for (int j = 0; j < TF_CLUSTER_NODES; j++)
            if (running(cl, i) && master_of[j] >= 0 && !sees_replica(cl, i, j, master_of[j])) {
                snprintf(why, whylen, "node %d does not see node %d as a replica of node %d yet", i, j,
                         master_of[j]);
                return false;
            }
    return refnode >= 0;
}

int tf_cluster_wait_ok(tf_cluster *cl, int timeout_ms)
{
    char why[256] = "no node running";
    long long deadline = tf_now_ms() + timeout_ms;
    int nap = 20;
    while (!whole(cl, why, sizeof why)) {
        if (tf_now_ms() > deadline) {
            fprintf(stderr, "tf_cluster: not whole after %d ms: %s\n", timeout_ms, why);
            tf_cluster_dump_logs(cl);
            return -1;
        }
        tf_sleep_ms(nap);
        if (nap < 200)
            nap *= 2;
    }
    return 0;
}

int tf_cluster_start(tf_cluster *cl, const char *extra_conf)
{
    memset(cl, 0, sizeof *cl);
    size_t off = (size_t)snprintf(cl->url, sizeof cl->url, "redis-cluster://");
    for (int i = 0; i < TF_CLUSTER_NODES; i++) {
        if (start_node(cl, i, extra_conf) != 0)
            goto fail;
        off += (size_t)snprintf(cl->url + off, sizeof cl->url - off, "%s127.0.0.1:%d", i ? "," : "",
                                cl->node[i].port);
    }
    for (int i = 0; i < TF_CLUSTER_NODES; i++) {
        redisReply *r = node_cmd(cl, i, "CLUSTER MYID");
        if (!r || r->type != REDIS_REPLY_STRING || r->len != 40) {
            fprintf(stderr, "tf_cluster: node %d: no CLUSTER MYID\n", i);
            if (r)
                freeReplyObject(r);
            goto fail;
        }
        memcpy(cl->id[i], r->str, 40);
        cl->id[i][40] = '\0';
        freeReplyObject(r);
    }
    if (create(cl) != 0)
        goto fail;
    if (tf_cluster_wait_ok(cl, WHOLE_TIMEOUT_MS) != 0)
        goto fail_dumped;
    return 0;
fail:
    tf_cluster_dump_logs(cl);
fail_dumped:
    tf_cluster_stop(cl);
    return -1;
}

void tf_cluster_stop(tf_cluster *cl)
{
    for (int i = 0; i < TF_CLUSTER_NODES; i++)
        tf_redis_stop(&cl->node[i]);
    cl->url[0] = '\0';
    cl->create_log[0] = '\0';
}

void tf_cluster_dump_logs(const tf_cluster *cl)
{
    if (cl->create_log[0])
        tf_dump_file(cl->create_log, "redis-cli --cluster create");
    for (int i = 0; i < TF_CLUSTER_NODES; i++) {
        if (!cl->node[i].logpath[0])
            continue;
        char title[64];
        snprintf(title, sizeof title, "cluster node %d (port %d) log", i, cl->node[i].port);
        tf_dump_file(cl->node[i].logpath, title);
    }
}

int tf_cluster_node_by_port(const tf_cluster *cl, int port)
{
    for (int i = 0; i < TF_CLUSTER_NODES; i++)
        if (port > 0 && cl->node[i].port == port)
            return i;
    return -1;
}

int tf_cluster_master_of(const tf_cluster *cl, int slot)
{
    static int port[16384];
    if (slot < 0 || slot >= 16384)
        return -1;
    for (int i = 0; i < TF_CLUSTER_NODES; i++)
        if (running(cl, i) && slot_ports(cl, i, port) == 0)
            return tf_cluster_node_by_port(cl, port[slot]);
    return -1;
}

bool tf_cluster_is_master(const tf_cluster *cl, int i)
{
    char role[16];
    if (!running(cl, i))
        return false;
    node_info(cl, i, "replication", "role", role, sizeof role);
    return !strcmp(role, "master");
}

int tf_cluster_replica_of(const tf_cluster *cl, int m)
{
    for (int j = 0; j < TF_CLUSTER_NODES; j++) {
        if (j == m || !running(cl, j))
            continue;
        char role[16], port[16];
        node_info(cl, j, "replication", "role", role, sizeof role);
        node_info(cl, j, "replication", "master_port", port, sizeof port);
        if (!strcmp(role, "slave") && atoi(port) == cl->node[m].port)
            return j;
    }
    return -1;
}

/* MIGRATEs every key of slot from src to dst, 100 at a time. */
static int move_keys(tf_cluster *cl, int slot, int src, int dst)
{
    for (;;) {
        redisReply *keys = node_cmd(cl, src, "CLUSTER GETKEYSINSLOT %d 100", slot);
        if (!keys || keys->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "tf_cluster: GETKEYSINSLOT %d on node %d failed\n", slot, src);
            if (keys)
                freeReplyObject(keys);
            return -1;
        }
        if (keys->elements == 0) {
            freeReplyObject(keys);
            return 0;
        }
        size_t argc = 8 + keys->elements;
        const char **argv = calloc(argc, sizeof *argv);
        size_t *len = calloc(argc, sizeof *len);
        char port[16];
        snprintf(port, sizeof port, "%d", cl->node[dst].port);
        const char *head[] = {"MIGRATE", "127.0.0.1", port, "", "0", "5000", "REPLACE", "KEYS"};
        for (size_t k = 0; k < 8; k++) {
            argv[k] = head[k];
            len[k] = strlen(head[k]);
        }
        for (size_t k = 0; k < keys->elements; k++) {
            argv[8 + k] = keys->element[k]->str;
            len[8 + k] = keys->element[k]->len;
        }
        struct timeval tv = {.tv_sec = 10, .tv_usec = 0};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", cl->node[src].port, tv);
        redisReply *r = c && !c->err ? redisCommandArgv(c, (int)argc, argv, len) : NULL;
        int rc = r && r->type == REDIS_REPLY_STATUS ? 0 : -1;
        if (rc != 0)
            fprintf(stderr, "tf_cluster: MIGRATE slot %d %d->%d: %s\n", slot, src, dst,
                    r && r->str ? r->str : "no reply");
        if (r)
            freeReplyObject(r);
        redisFree(c);
        free(argv);
        free(len);
        freeReplyObject(keys);
        if (rc != 0)
            return -1;
    }
}

int tf_cluster_migrate_slot(tf_cluster *cl, int slot, int dst, bool finish)
{
    int src = tf_cluster_master_of(cl, slot);
    if (src < 0 || src == dst || !tf_cluster_is_master(cl, dst)) {
        fprintf(stderr, "tf_cluster: cannot move slot %d from node %d to node %d\n", slot, src, dst);
        return -1;
    }
    if (node_ok(cl, dst, "CLUSTER SETSLOT %d IMPORTING %s", slot, cl->id[src]) != 0 ||
        node_ok(cl, src, "CLUSTER SETSLOT %d MIGRATING %s", slot, cl->id[dst]) != 0 ||
        move_keys(cl, slot, src, dst) != 0)
        return -1;
    if (!finish)
        return 0;
    /* The new owner first, then the old one, then every other master. */
    if (node_ok(cl, dst, "CLUSTER SETSLOT %d NODE %s", slot, cl->id[dst]) != 0 ||
        node_ok(cl, src, "CLUSTER SETSLOT %d NODE %s", slot, cl->id[dst]) != 0)
        return -1;
    for (int i = 0; i < TF_CLUSTER_NODES; i++)
        if (i != src && i != dst && tf_cluster_is_master(cl, i) &&
            node_ok(cl, i, "CLUSTER SETSLOT %d NODE %s", slot, cl->id[dst]) != 0)
            return -1;
    return 0;
}

struct which {
    const tf_cluster *cl;
    int i;
};

static bool is_master_cond(void *ud)
{
    const struct which *w = ud;
    return tf_cluster_is_master(w->cl, w->i);
}

int tf_cluster_failover(tf_cluster *cl, int r)
{
    if (node_ok(cl, r, "CLUSTER FAILOVER") != 0)
        return -1;
    struct which w = {cl, r};
    if (!tf_wait_until(is_master_cond, &w, FAILOVER_TIMEOUT_MS)) {
        fprintf(stderr, "tf_cluster: node %d is not a master %d ms after CLUSTER FAILOVER\n", r,
                FAILOVER_TIMEOUT_MS);
        tf_cluster_dump_logs(cl);
        return -1;
    }
    return tf_cluster_wait_ok(cl, FAILOVER_TIMEOUT_MS);
}

bool tf_cluster_replica_caught_up(const tf_cluster *cl, int m, int timeout_ms)
{
    redisContext *c = tf_redis_connect(&cl->node[m]);
    bool ok = false;
    for (long long until = tf_now_ms() + timeout_ms; c && !ok && tf_now_ms() < until;) {
        redisReply *r = redisCommand(c, "INFO replication");
        if (!r || r->type != REDIS_REPLY_STRING) {
            freeReplyObject(r);
            break;
        }
        char off[32], slave[256];
        tf_info_field(r->str, "master_repl_offset", off, sizeof off);
        tf_info_field(r->str, "slave0", slave, sizeof slave);
        freeReplyObject(r);
        const char *so = strstr(slave, "offset=");
        ok = so && off[0] && atoll(so + 7) >= atoll(off);
        if (!ok)
            tf_sleep_ms(20);
    }
    if (c)
        redisFree(c);
    return ok;
}
