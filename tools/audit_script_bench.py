#!/usr/bin/env python3
"""audit_script_bench.py LUA_FILE [LAYOUT] [CALLS] [RECORDS] [PER_AGGREGATE]

Times workers/lua/audit_append.lua alone on a private redis-server (AOF
everysec, no automatic rewrite): CALLS calls of RECORDS records each (default
1000 x 60, about one closed-loop batch of `./chorus bench e2e`), PER_AGGREGATE
consecutive seqs per aggregate (default 4, a saga's events). Prints EVALSHA's
us per call (INFO commandstats, inclusive), redis-server CPU per call (INFO
used_cpu_*: also request parsing, AOF formatting and writes), request bytes
per call and the commands the script ran per call.

LAYOUT is the script's ARGV layout: "runs" (default: six fields per record,
then seen/first/last per run of seqs, as workers/lua/audit_append.h) or "v1"
(the layout before issue 10: prev, seen index and seq sent with every record),
so the script of another commit can be timed the same way, e.g.
  git show f5ce60c:workers/lua/audit_append.lua > /tmp/v1.lua
  tools/audit_script_bench.py /tmp/v1.lua v1
Hashes are random-looking hex: the script does not check them."""
import hashlib, sys

from redis_lab import PrivateRedis

lua = sys.argv[1]
layout = sys.argv[2] if len(sys.argv) > 2 else "runs"
calls = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
nrec = int(sys.argv[4]) if len(sys.argv) > 4 else 60
per = int(sys.argv[5]) if len(sys.argv) > 5 else 4
if layout not in ("runs", "v1"):
    sys.exit("layout must be runs or v1")


srv = PrivateRedis(["--appendonly", "yes", "--appendfsync", "everysec", "--auto-aof-rewrite-percentage", "0"])
conn = srv.conn()
cmd, info = conn.cmd, conn.info


def hexhash(s):
    return hashlib.blake2b(s.encode(), digest_size=32).hexdigest()


try:
    sha = cmd("SCRIPT", "LOAD", open(lua).read()).decode()
    head, agg = "", 0
    cmd("CONFIG", "RESETSTAT")
    c = info("cpu")
    cpu0 = float(c["used_cpu_user"]) + float(c["used_cpu_sys"])
    in0 = int(info("stats")["total_net_input_bytes"])
    for call in range(calls):
        keys = ["chorus:{audit}:log", "chorus:{audit}:head"]
        args = [head, "none", "604800", str(nrec)]
        if layout == "runs":
            args.append(str((nrec + per - 1) // per))
        runs = []
        prev = head or "0" * 64
        for k in range(nrec):
            if k % per == 0:
                agg += 1
                keys.append("chorus:{audit}:seen:checkout:%032x" % agg)
                if layout == "runs":
                    runs += [str(len(keys)), "1", str(min(per, nrec - k))]
            ev = "%08x-0000-7000-8000-%012x" % (call, k)
            h = hexhash(prev + ev)
            rec = [ev, "%d-%d" % (1700000000000 + call, k), "StockReserved", "%032x" % agg, hexhash(ev)]
            rec += [prev, h, str(len(keys)), str(k % per + 1)] if layout == "v1" else [h]
            args += rec
            prev = h
        r = cmd("EVALSHA", sha, len(keys), *keys, *args, *runs)
        if not r or r[0] != b"ok":
            sys.exit("unexpected reply %r" % (r,))
        head = prev
    c = info("cpu")
    cpu1 = float(c["used_cpu_user"]) + float(c["used_cpu_sys"])
    in1 = int(info("stats")["total_net_input_bytes"])
    stats = {k[8:]: dict(x.split("=") for x in v.split(",")) for k, v in info("commandstats").items()
             if k.startswith("cmdstat_")}
    ev = stats["evalsha"]
    inner = ", ".join("%s %.1f" % (k, int(v["calls"]) / calls) for k, v in sorted(stats.items())
                      if k not in ("evalsha", "info", "script|load") and not k.startswith("config"))
    print("%s: %d calls of %d records (%d per aggregate): evalsha %.1f us/call (%.2f us/record), "
          "redis-server CPU %.1f us/call, %.0f bytes in/call; per call: %s"
          % (layout, calls, nrec, per, float(ev["usec_per_call"]), float(ev["usec_per_call"]) / nrec,
             (cpu1 - cpu0) * 1e6 / calls, (in1 - in0) / calls, inner))
finally:
    conn.close()
    srv.stop()
