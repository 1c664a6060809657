#!/usr/bin/env python3
"""aof_stats.py FILE [SAGAS] [MAX_BYTES]

Reads a Redis AOF file (the plain-text commands of an `*.incr.aof`; an RDB
preamble is not read) and prints which commands, grouped by command and key
family (ids replaced by *), make up its bytes: share, bytes and commands per
saga when SAGAS is given (else totals). Reads the first MAX_BYTES (200 MB).
Used on the AOF of a `./chorus bench e2e` run to see what the log is made
of (BENCHMARKS.md "AOF rewrites")."""
import collections, re, sys

# commands whose first argument is a key worth grouping by
KEYED = {"XCLAIM", "XACK", "XADD", "HSET", "HDEL", "RPUSH", "SET", "GETSET", "DEL", "EXPIRE", "PEXPIREAT",
         "EXPIREAT", "ZADD", "ZREM", "ZREMRANGEBYRANK", "SETRANGE", "PUBLISH", "XTRIM", "HINCRBY", "INCRBY",
         "XGROUP", "XAUTOCLAIM", "SADD"}


def family(key):
    k = key.decode("latin1")
    k = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "*", k)
    k = re.sub(r"^(chorus:idem:(\{p\d+\}:)?).*$", r"\1*", k)
    return re.sub(r":[0-9A-Za-z_.-]{6,}$", ":*", k)[:60]


def main():
    path = sys.argv[1]
    sagas = float(sys.argv[2]) if len(sys.argv) > 2 else 0
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000_000
    with open(path, "rb") as f:
        data = f.read(limit)
    size, count = collections.Counter(), collections.Counter()
    i, n = 0, len(data)
    while i < n and data[i:i + 1] == b"*":
        j = data.index(b"\r\n", i)
        p, args = j + 2, []
        for _ in range(int(data[i + 1:j])):
            j = data.find(b"\r\n", p)
            if j < 0:
                break
            ln = int(data[p + 1:j])
            p = j + 2
            args.append(data[p:p + ln])
            p += ln + 2
        if p > n:   # a command cut by MAX_BYTES
            break
        name = args[0].upper().decode()
        if name in KEYED and len(args) > 1:
            name += " " + family(args[1])
        size[name] += p - i
        count[name] += 1
        i = p
    total = sum(size.values())
    per = sagas if sagas > 0 else 1
    print("%d bytes in %d commands%s" % (total, sum(count.values()),
                                         ", %.0f B and %.1f commands per saga" % (total / per, sum(count.values()) / per)
                                         if sagas else ""))
    for name, b in size.most_common(40):
        print("%5.1f%%  %10.0f B  %8.2f commands  %s" % (100.0 * b / total, b / per, count[name] / per, name))


if __name__ == "__main__":
    main()
