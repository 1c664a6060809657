#!/usr/bin/env python3
"""slowlog_scripts.py PORT [SAMPLES] [WINDOW_S] [GAP_S]

Samples a running redis-server (127.0.0.1:PORT) with SLOWLOG in SAMPLES
windows of WINDOW_S seconds (slowlog-log-slower-than 0 only inside a window,
GAP_S seconds apart) and prints, per script (labelled by its first KEYS name
with a trailing id replaced by *) and per command, calls and mean
microseconds per call, and each script's share of the EVALSHA calls.
Used during `./chorus bench e2e` to see what one script costs Redis: a
script's calls per saga = its share of EVALSHA calls x the bench's
evalsha calls/saga. Times are wall-clock inside redis-server (a busy machine
inflates them). Restores slowlog-log-slower-than 10000 at the end."""
import collections, re, sys, time

from redis_lab import Conn


def label(args):
    cmd = args[0].decode().lower()
    if cmd in ("evalsha", "eval") and len(args) > 3 and int(args[2]) > 0:
        key = args[3].decode(errors="replace")
        # an idempotency record names a client and a key: one label for all
        key = re.sub(r"^(chorus:idem:(\{p\d+\}:)?).*$", r"\1*", key)
        key = re.sub(r":[0-9A-Za-z_-]{6,}$", ":*", key)
        return "%s[%s]" % (cmd, key)
    return cmd


def main():
    port = int(sys.argv[1])
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    window = float(sys.argv[3]) if len(sys.argv) > 3 else 0.3
    gap = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    cmd = Conn(port).cmd
    cmd("CONFIG", "SET", "slowlog-max-len", "100000")
    calls, us = collections.Counter(), collections.Counter()
    try:
        for _ in range(samples):
            cmd("CONFIG", "SET", "slowlog-log-slower-than", "0")
            cmd("SLOWLOG", "RESET")
            time.sleep(window)
            cmd("CONFIG", "SET", "slowlog-log-slower-than", "-1")
            for e in cmd("SLOWLOG", "GET", "100000"):
                args = e[3]
                lab = label(args)
                if lab in ("slowlog", "config"):
                    continue
                calls[lab] += 1
                us[lab] += int(e[2])
            time.sleep(gap)
    finally:
        cmd("CONFIG", "SET", "slowlog-log-slower-than", "10000")
        cmd("SLOWLOG", "RESET")
    tot = sum(us.values())
    ev = sum(n for lab, n in calls.items() if lab.startswith("evalsha"))
    print("SLOWLOG evalsha calls in the windows: %d (multiply a script's share of them by the bench's evalsha calls/saga)" % ev)
    for lab, n in sorted(calls.items(), key=lambda kv: -us[kv[0]]):
        print("SLOWLOG %-40s calls %7d  us/call %8.1f  share of time %5.1f%%  of evalsha calls %5.1f%%" %
              (lab, n, us[lab] / n, 100.0 * us[lab] / tot, 100.0 * n / ev if lab.startswith("evalsha") and ev else 0))


if __name__ == "__main__":
    main()
