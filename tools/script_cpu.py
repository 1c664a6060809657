#!/usr/bin/env python3
"""script_cpu.py [ROUNDS] REV [REV...]

What each per-checkout script costs redis-server, in CPU microseconds per
call, for the scripts as they are at each git revision REV ("." = the work
tree): the checkout-slot saga steps (reserve, create_order, release), the
intake, and line.lua holding and selling 50 lines of one product in one
call. A private redis-server (no AOF, no RDB) on a free loopback port runs
4,000 pipelined calls per script on realistic data (a history of the
events a step finds, a held reservation record, payloads of the bench's
size) after FLUSHALL; the figure is the server thread's CPU time
(/proc/<pid>/task/<pid>/schedstat) over the calls, so a busy machine
inflates it less than wall time. Revisions alternate within each round;
the minimum over ROUNDS (default 3) is printed. Run from the repository.

Written for issue 10 to tell the scripts' own cost from the bench's noise;
the KEYS/ARGV layouts here mirror the C modules beside the scripts."""
import json, subprocess, sys, uuid

from redis_lab import Conn, PrivateRedis

N = 4000


def git_file(rev, path):
    if rev == ".":
        return open(path).read()
    return subprocess.run(["git", "show", "%s:%s" % (rev, path)], check=True, capture_output=True,
                          text=True).stdout


class Redis(Conn):
    """The private server (no AOF) and one connection to it."""

    def __init__(self):
        self.srv = PrivateRedis(["--appendonly", "no"])
        Conn.__init__(self, self.srv.port)

    def cpu_ns(self):
        return self.srv.cpu_ns()

    def stop(self):
        self.close()
        self.srv.stop()


CO = "0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee"
ITEMS = [{"product_id": "ok", "quantity": 1, "unit_price_cents": 1999},
         {"product_id": "lux", "quantity": 2, "unit_price_cents": 99900}]
INIT = {"client_id": "client-000123", "items": ITEMS, "total_cents": 201799, "currency": "EUR"}


def payload(eid, typ, seq, data):
    return json.dumps({"event_id": eid, "type": typ, "schema": 1, "aggregate": "checkout", "aggregate_id": CO,
                       "seq": seq, "correlation_id": CO, "causation_id": eid, "producer": "stock-reservation",
                       "emitted_at": 1700000000.123456, "data": data}, separators=(",", ":"))


class Rev:
    def __init__(self, r, rev):
        self.rev = rev
        lib = git_file(rev, "event_store/lua/append_lib.lua")
        # since issue 10 an append at an expected version takes the whole payload
        self.whole = "es_check_after" in lib
        self.src = {"lib": lib}
        for name, path in (("reserve", "workers/lua/reserve.lua"), ("create_order", "workers/lua/create_order.lua"),
                           ("release", "workers/lua/release.lua"), ("resv_lib", "workers/lua/resv_lib.lua"),
                           ("line", "workers/lua/line.lua"), ("intake", "api/lua/intake.lua")):
            self.src[name] = git_file(rev, path)
        self.r = r

    def sha(self, *parts):
        return self.r.cmd("SCRIPT", "LOAD", "\n".join(self.src[p] for p in parts)).decode()

    def ev(self, typ, seq, data):
        e = str(uuid.uuid4())
        p = payload(e, typ, seq, data)
        if self.whole:
            return [e, typ, "1700000000.200000", p, ""]
        head, _, tail = p.partition('"seq":%d' % seq)
        return [e, typ, "1700000000.200000", head + '"seq":', tail]


def element(typ, seq, data=INIT):
    e = str(uuid.uuid4())
    return "%s\n1700000000000-%d\n%s\n1700000000.100000\n%s" % (e, seq, typ, payload(e, typ, seq, data))


def hist(i):
    return "chorus:h:checkout:%s-%06d" % (CO[:24], i)


def resv(i):
    return "chorus:resv:%s-%06d" % (CO[:24], i)


LINES = {"lines": [{"product_id": "ok", "quantity": 1}, {"product_id": "lux", "quantity": 2}]}


def sc_reserve(v):
    sha = v.sha("lib", "reserve")
    setup = [("RPUSH", hist(i), element("CheckoutInitiated", 1)) for i in range(N)]
    calls = [("EVALSHA", sha, 3, hist(i), "ecommerce.checkout.events", resv(i), 1, 1,
              *v.ev("StockReserved", 2, LINES), 2, "ok", 1, "lux", 2) for i in range(N)]
    return setup, calls


def sc_create_order(v):
    sha = v.sha("lib", "resv_lib", "create_order")
    setup = []
    for i in range(N):
        setup.append(("RPUSH", hist(i), element("CheckoutInitiated", 1), element("StockReserved", 2, LINES)))
        setup.append(("HSET", resv(i), "state", "held", "p:ok", 1, "p:lux", 2))
        setup.append(("ZADD", "chorus:saga:started", i, "co%d" % i))
    items = json.dumps(ITEMS, separators=(",", ":"))
    calls = [("EVALSHA", sha, 5, hist(i), "ecommerce.checkout.events", resv(i), "chorus:order:o-%06d" % i,
              "chorus:saga:started", 2, 2,
              *v.ev("OrderCreated", 3, {"order_id": "o-%06d" % i, "total_cents": 201799, "items": ITEMS}),
              *v.ev("CheckoutSucceeded", 4, {"order_id": "o-%06d" % i}),
              "co%d" % i, "o-%06d" % i, "client-000123", 201799, items, "1700000000.300000", 604800, 2, "ok", "lux")
             for i in range(N)]
    return setup, calls


def sc_release(v):
    sha = v.sha("lib", "resv_lib", "release")
    setup = []
    for i in range(N):
        setup.append(("RPUSH", hist(i), element("CheckoutInitiated", 1), element("StockReserved", 2, LINES),
                      element("OrderCreationFailed", 3, {"reason": "order_limit_exceeded"})))
        setup.append(("HSET", resv(i), "state", "held", "p:ok", 1, "p:lux", 2))
        setup.append(("ZADD", "chorus:saga:started", i, "co%d" % i))
    calls = [("EVALSHA", sha, 4, hist(i), "ecommerce.checkout.events", resv(i), "chorus:saga:started", 3, 2,
              *v.ev("StockReleased", 4, LINES), *v.ev("CheckoutFailed", 5, {"reason": "order_limit_exceeded"}),
              "co%d" % i, "1", 604800) for i in range(N)]
    return setup, calls


def sc_intake(v):
    sha = v.sha("lib", "intake")
    calls = [("EVALSHA", sha, 3, "chorus:idem:client-000123:k%06d" % i, hist(i), "ecommerce.checkout.events", "1",
              "%064d" % i, "co%d\nA" % i, 86400, 0, 0, 0, 1, *v.ev("CheckoutInitiated", 1, INIT)) for i in range(N)]
    return [], calls


def marks(b):
    return ["chorus:hold:{chorus:product:ok}:%s-%06d" % (CO[:24], b * 50 + k) for k in range(50)]


def sc_hold50(v):
    sha = v.sha("line")
    setup = [("HSET", "chorus:product:ok", "available", 100000000, "reserved", 0, "sold", 0)]
    calls = [("EVALSHA", sha, 51, "chorus:product:ok", *marks(b), "hold", 604800, *([1] * 50)) for b in range(N // 50)]
    return setup, calls


def sc_sell50(v):
    sha = v.sha("line")
    setup = [("HSET", "chorus:product:ok", "available", 100000000, "reserved", N, "sold", 0)]
    calls = []
    for b in range(N // 50):
        setup.append(("MSET", *[x for k in marks(b) for x in (k, "held:1")]))
        calls.append(("EVALSHA", sha, 51, "chorus:product:ok", *marks(b), "sell", 604800, *([1] * 50)))
    return setup, calls


SCENARIOS = [("reserve", sc_reserve), ("create_order", sc_create_order), ("release", sc_release),
             ("intake", sc_intake), ("line hold, 50 lines", sc_hold50), ("line sell, 50 lines", sc_sell50)]


def main():
    args = sys.argv[1:]
    rounds = 3
    if args and args[0].isdigit():
        rounds = int(args.pop(0))
    if not args:
        print(__doc__.strip())
        sys.exit(2)
    r = Redis()
    try:
        revs = [Rev(r, a) for a in args]
        best = {}
        for _ in range(rounds):
            for name, fn in SCENARIOS:
                for v in revs:
                    r.cmd("FLUSHALL")
                    setup, calls = fn(v)
                    r.pipe(setup)
                    c0 = r.cpu_ns()
                    last = r.pipe(calls)
                    c1 = r.cpu_ns()
                    if isinstance(last, list) and last and last[0] in (b"dup", b"conflict", b"exists"):
                        raise RuntimeError("%s at %s answered %r" % (name, v.rev, last))
                    us = (c1 - c0) / 1000 / len(calls)
                    best[(name, v.rev)] = min(best.get((name, v.rev), us), us)
        print("%-22s %s" % ("redis CPU us per call", "  ".join("%12s" % a[:12] for a in args)))
        for name, _ in SCENARIOS:
            print("%-22s %s" % (name, "  ".join("%12.1f" % best[(name, a)] for a in args)))
    finally:
        r.stop()


if __name__ == "__main__":
    main()
