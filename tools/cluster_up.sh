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
#   CLUSTER_PARTITIONS=N with start/create      on a new cluster, balance the slots of the
#                                               partition tags {p0}..{pN-1} over the masters
#                                               (for a supervisor: redis-server "$(... conf ...)")
#   tools/cluster_up.sh create DIR [BASE_PORT]  with the 6 servers running: create the cluster
#                                               unless they already form one (a restart keeps
#                                               nodes.conf), wait until whole, print REDIS_URL
#   tools/cluster_up.sh balance HOST:PORT N     on a new (empty) cluster reached at HOST:PORT (any
#                                               node; the others as CLUSTER NODES names them),
#                                               balance partitions {p0}..{pN-1} as above and wait
#                                               for cluster_state:ok (compose's cluster-init)
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
auto-aof-rewrite-percentage 400
stream-node-max-bytes 16384
stream-node-max-entries 1000
save ""
repl-diskless-sync-delay 0
EOF
    echo "$nd/redis.conf"
}

cli() {   # cli HOST:PORT ARGS...: redis-cli against that node
    local a=$1
    shift
    redis-cli -h "${a%:*}" -p "${a##*:}" "$@"
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
    local created=0
    if [[ $(info_field "$base" cluster_known_nodes) != "$NODES" ]]; then
        redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
            >"$dir/cluster-create.log" 2>&1 ||
            { tail -n 20 "$dir/cluster-create.log" >&2; die "redis-cli --cluster create failed ($dir/cluster-create.log)"; }
        created=1
    fi
    until whole "$base"; do
        ((SECONDS < deadline)) || die "cluster not whole after ${WAIT_S}s (logs: $dir/node-*/redis.log)"
        sleep 0.1
    done
    if ((created)) && [[ ${CLUSTER_PARTITIONS:-1} -gt 1 ]]; then
        balance "127.0.0.1:$base" "$CLUSTER_PARTITIONS"
        until whole "$base"; do
            ((SECONDS < deadline + WAIT_S)) || die "cluster not whole after balancing (logs: $dir/node-*/redis.log)"
            sleep 0.1
        done
    fi
    url "$base"
}

# balance SEED PARTITIONS: on a new (empty) cluster that the node at SEED
# (HOST:PORT) belongs to, moves the slots of the
# partitions' hash tags {p0}..{pN-1} from the master owning most partitions
# to the one owning fewest until they differ by one at most. redis-cli's
# even slot ranges give 3 masters 4, 5 and 7 of 16 partitions; a checkout's
# keys follow its partition, so that would load one master 1.3x its share.
# Only empty slots move (no MIGRATE): IMPORTING/MIGRATING, then NODE on the
# destination and the source.
balance() {
    local seed=$1 parts=$2 p slot id addr flags rest hi lo i moved=0 nodes owner
    local -a mid=() maddr=() count=() pslot=() powner=()
    nodes=$(cli "$seed" cluster nodes) || die "CLUSTER NODES failed on $seed"
    while read -r id addr flags rest; do
        # masters owning slots (a replica can still read "master" from here
        # for a moment after the create)
        [[ $flags == *master* && $(wc -w <<<"$rest") -gt 5 ]] || continue
        addr=${addr%%@*}
        mid+=("$id"); maddr+=("$addr"); count+=(0)
    done <<<"$nodes"
    ((${#mid[@]} > 1)) || return 0
    for ((p = 0; p < parts; p++)); do
        slot=$(cli "$seed" cluster keyslot "{p$p}")
        owner=$(awk -v s="$slot" '$3 ~ /master/ {
                    for (f = 9; f <= NF; f++) {
                        if ($f ~ /^\[/) continue
                        n = split($f, r, "-"); lo = r[1]; hi = n > 1 ? r[2] : r[1]
                        if (s + 0 >= lo + 0 && s + 0 <= hi + 0) { print $1; exit }
                    } }' <<<"$nodes")
        pslot[p]=$slot
        powner[p]=-1
        for i in "${!mid[@]}"; do [[ ${mid[i]} == "$owner" ]] && powner[p]=$i; done
        ((powner[p] >= 0)) || die "no master owns slot $slot of partition $p"
        count[powner[p]]=$((count[powner[p]] + 1))
    done
    while :; do
        hi=0; lo=0
        for i in "${!mid[@]}"; do
            ((count[i] > count[hi])) && hi=$i
            ((count[i] < count[lo])) && lo=$i
        done
        ((count[hi] - count[lo] > 1)) || break
        for ((p = 0; p < parts; p++)); do ((powner[p] == hi)) && break; done
        slot=${pslot[p]}
        cli "${maddr[lo]}" cluster setslot "$slot" importing "${mid[hi]}" >/dev/null &&
            cli "${maddr[hi]}" cluster setslot "$slot" migrating "${mid[lo]}" >/dev/null &&
            cli "${maddr[lo]}" cluster setslot "$slot" node "${mid[lo]}" >/dev/null &&
            cli "${maddr[hi]}" cluster setslot "$slot" node "${mid[lo]}" >/dev/null ||
            die "moving slot $slot (partition $p) to ${maddr[lo]} failed"
        for ((i = 0; i < parts; i++)); do   # every partition in that slot went along
            if ((pslot[i] == slot)); then
                count[powner[i]]=$((count[powner[i]] - 1)); powner[i]=$lo; count[lo]=$((count[lo] + 1))
            fi
        done
        moved=$((moved + 1))
    done
    ((moved == 0)) || echo "cluster_up: moved $moved empty partition slot(s): the masters own ${count[*]} of $parts partitions" >&2
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
    balance) [[ $# -eq 3 && $2 =~ ^[^:]+:[0-9]+$ && $3 =~ ^[0-9]+$ ]] ||
                 die "usage: $0 balance HOST:PORT PARTITIONS"
             balance "$2" "$3"
             deadline=$((SECONDS + WAIT_S))
             until cli "$2" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; do
                 ((SECONDS < deadline)) || die "cluster not ok after balancing"
                 sleep 0.1
             done ;;
    *)      die "usage: $0 start|stop|conf|create DIR [PORT], or balance HOST:PORT PARTITIONS (see the top of $0)" ;;
esac
