#!/usr/bin/env bash
# cluster_up.sh - a local Redis Cluster on loopback: 3 masters + 3 replicas,
# AOF on, one directory per node. Standalone, and made to be reused by
# `CHORUS_CLUSTER=3 ./chorus up`, which supervises the servers itself.
#
#   tools/cluster_up.sh start DIR [BASE_PORT]   start 6 servers in the background (ports
#                                               BASE_PORT..BASE_PORT+5, default 7000),
#                                               create the cluster (first time only), wait
#                                               until it is whole, print its REDIS_URL
#   tools/cluster_up.sh stop DIR                stop the servers started by `start` (by PID)
#   tools/cluster_up.sh conf DIR PORT           write DIR/node-PORT/redis.conf, print its path
#                                               (AOF fsync CLUSTER_FSYNC: everysec by default)
#                                               (for a supervisor: redis-server "$(... conf ...)")
#   tools/cluster_up.sh create DIR [BASE_PORT]  with the 6 servers running: create the cluster
#                                               unless they already form one (a restart keeps
#                                               nodes.conf), wait until whole, print REDIS_URL
#
# The REDIS_URL printed is redis-cluster://127.0.0.1:BASE_PORT,...; data and
# logs stay under DIR/node-PORT/ across restarts. Exits non-zero with a
# one-line reason (and the tail of a log) when something does not come up.
set -euo pipefail

NODES=6
NODE_TIMEOUT_MS=5000
WAIT_S=30

die() { echo "cluster_up: $*" >&2; exit 1; }

ports() {   # ports BASE: the six ports
    local base=$1 i
    for ((i = 0; i < NODES; i++)); do echo $((base + i)); done
}

check_base() {   # check_base BASE: the ports and their bus ports (+10000) fit
    [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1024 && $1 + NODES - 1 + 10000 <= 65535)) ||
        die "BASE_PORT must be 1024..$((65535 - 10000 - NODES + 1)) (bus ports are port+10000), got '$1'"
}

conf() {   # conf DIR PORT: writes the node's redis.conf, prints its path
    local dir=$1 port=$2
    case ${CLUSTER_FSYNC:-everysec} in
        always | everysec | no) ;;
        *) die "CLUSTER_FSYNC must be always, everysec or no, not '$CLUSTER_FSYNC'" ;;
    esac
    local nd="$dir/node-$port"
    mkdir -p "$nd"
    nd=$(cd "$nd" && pwd)
    cat >"$nd/redis.conf" <<EOF
# written by tools/cluster_up.sh
bind 127.0.0.1
port $port
protected-mode yes
daemonize no
dir "$nd"
logfile "$nd/redis.log"
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout $NODE_TIMEOUT_MS
appendonly yes
appendfsync ${CLUSTER_FSYNC:-everysec}
auto-aof-rewrite-min-size 512mb
stream-node-max-bytes 16384
stream-node-max-entries 1000
save ""
repl-diskless-sync-delay 0
EOF
    echo "$nd/redis.conf"
}

info_field() {   # info_field PORT FIELD [SECTION]: a field of CLUSTER INFO or INFO SECTION
    local port=$1 field=$2 section=${3:-}
    local out
    if [[ -z $section ]]; then
        out=$(redis-cli -p "$port" cluster info 2>/dev/null) || return 0
    else
        out=$(redis-cli -p "$port" info "$section" 2>/dev/null) || return 0
    fi
    sed -n "s/^$field:\([^[:space:]]*\).*/\1/p" <<<"$out"
}

whole() {   # whole BASE: every node says cluster_state:ok with all slots served
    local port
    for port in $(ports "$1"); do
        [[ $(info_field "$port" cluster_state) == ok ]] || return 1
        [[ $(info_field "$port" cluster_slots_ok) == 16384 ]] || return 1
        [[ $(info_field "$port" cluster_known_nodes) == "$NODES" ]] || return 1
    done
}

url() {   # url BASE: the REDIS_URL naming every node as a seed
    local s="" port
    for port in $(ports "$1"); do s+="${s:+,}127.0.0.1:$port"; done
    echo "redis-cluster://$s"
}

create() {   # create DIR BASE
    local dir=$1 base=$2 port deadline addrs=()
    deadline=$((SECONDS + WAIT_S))
    for port in $(ports "$base"); do
        until redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; do
            local pidf="$dir/node-$port/pid"
            if ((SECONDS >= deadline)) || { [[ -f $pidf ]] && ! kill -0 "$(<"$pidf")" 2>/dev/null; }; then
                tail -n 5 "$dir/node-$port/redis.log" >&2 || true
                die "node $port is not answering (log: $dir/node-$port/redis.log)"
            fi
            sleep 0.05
        done
        addrs+=("127.0.0.1:$port")
    done
    # Already a cluster (a restart: nodes.conf kept)? Then only wait.
    if [[ $(info_field "$base" cluster_known_nodes) != "$NODES" ]]; then
        redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
            >"$dir/cluster-create.log" 2>&1 ||
            { tail -n 20 "$dir/cluster-create.log" >&2; die "redis-cli --cluster create failed ($dir/cluster-create.log)"; }
    fi
    until whole "$base"; do
        ((SECONDS < deadline)) || die "cluster not whole after ${WAIT_S}s (logs: $dir/node-*/redis.log)"
        sleep 0.1
    done
    url "$base"
}

start() {   # start DIR BASE
    local dir=$1 base=$2 port c p
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
        die "redis-server and redis-cli are needed (apt-get install redis-server redis-tools)"
    for port in $(ports "$base"); do
        for p in "$port" $((port + 10000)); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                die "port $p is in use: pick another BASE_PORT (or stop what listens there)"
            fi
        done
    done
    for port in $(ports "$base"); do
        c=$(conf "$dir" "$port")
        setsid redis-server "$c" </dev/null >>"$dir/node-$port/redis.log" 2>&1 &
        echo $! >"$dir/node-$port/pid"
    done
    create "$dir" "$base"
}

stop() {   # stop DIR: SIGTERM each node by its pid file, SIGKILL after 10 s
    local dir=$1 f pid deadline
    for f in "$dir"/node-*/pid; do
        [[ -f $f ]] || continue
        pid=$(<"$f")
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 10))
    for f in "$dir"/node-*/pid; do
        [[ -f $f ]] || continue
        pid=$(<"$f")
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}

cmd=${1:-}
case "$cmd" in
    start)  [[ $# -ge 2 ]] || die "usage: $0 start DIR [BASE_PORT]"
            check_base "${3:-7000}"; mkdir -p "$2"; start "$2" "${3:-7000}" ;;
    create) [[ $# -ge 2 ]] || die "usage: $0 create DIR [BASE_PORT]"
            check_base "${3:-7000}"; mkdir -p "$2"; create "$2" "${3:-7000}" ;;
    conf)   [[ $# -eq 3 ]] || die "usage: $0 conf DIR PORT"
            [[ $3 =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$3'"
            conf "$2" "$3" ;;
    stop)   [[ $# -eq 2 ]] || die "usage: $0 stop DIR"
            stop "$2" ;;
    *)      die "usage: $0 start|stop|conf|create DIR [PORT] (see the top of $0)" ;;
esac
