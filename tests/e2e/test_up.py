#!/usr/bin/env python3
"""test_up.py - `./chorus up` as a user runs it: the real script, supervising
the real redis-server, chorus-api and six chorus-worker processes.

Each case runs `./chorus up` with a temp CHORUS_DATA_DIR and private ports
(API_PORT, METRICS_PORT and the Redis port taken from free ones), on the
binaries of this build (CHORUS_BUILD_DIR: no second build) and without the
package check (CHORUS_SKIP_DEPS=1). Cases (run one with `test_up.py NAME`):

  up_survives_redis_sigkill_without_losing_accepted_checkouts
      four clients post checkouts without pause (a 503 is retried with the
      same Idempotency-Key, as DESIGN.md tells clients to); the embedded
      redis-server is SIGKILLed in the middle. `up` must restart it and keep
      running, the API must answer 202 again, every checkout answered 202
      must be in the event store afterwards with exactly one terminal event,
      and no answer may be other than 202 or 503.
  up_takes_a_free_redis_port_when_the_default_is_busy
      the default port (CHORUS_REDIS_DEFAULT_PORT, standing in for 6379) is
      held by a listener: `up` says which port it took instead, the banner
      shows it, every process got that REDIS_URL, and a checkout succeeds.
  up_refuses_an_explicit_busy_redis_port_in_one_line
      REDIS_PORT set and busy: `up` exits 1 and its last line says so.

Environment (tests/meson.build): CHORUS_ROOT (the source dir holding
./chorus), CHORUS_BUILD_DIR (this build). Exit 0 on success, 77 (skipped)
without redis-server or curl, 1 on a failure (with the output of `up`).
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from testlib import fail, free_port, free_range, wait_until  # noqa: E402

ADMIN_TOKEN = "test-up-admin-token-0123456789"
PRODUCT = "up-test-item"


class Client:
    """One keep-alive HTTP connection to the API; reconnects after an error."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def call(self, method, path, body=None, headers=None, timeout=10):
        """(status, parsed JSON body) or (None, error text) when the
        connection failed."""
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        data = json.dumps(body) if body is not None else None
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            self.conn.request(method, path, body=data, headers=h)
            r = self.conn.getresponse()
            raw = r.read()
            try:
                parsed = json.loads(raw or b"{}")
            except ValueError:
                parsed = {"raw": raw[:200].decode("latin-1")}
            if r.getheader("Connection", "").lower() == "close":
                self.close()
            return r.status, parsed
        except (OSError, http.client.HTTPException) as e:
            self.close()
            return None, str(e)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Up:
    """A `./chorus up` process with its own data dir; its output is collected."""

    def __init__(self, extra_env):
        self.dir = tempfile.mkdtemp(prefix="chorus-up-test-")
        env = {k: v for k, v in os.environ.items()
               if k not in ("REDIS_URL", "REDIS_PORT", "API_PORT", "METRICS_PORT", "CHORUS_REDIS_FSYNC")}
        env.update({"CHORUS_DATA_DIR": self.dir, "CHORUS_BUILD_DIR": os.environ["CHORUS_BUILD_DIR"],
                    "CHORUS_SKIP_DEPS": "1", "CHORUS_ADMIN_TOKEN": ADMIN_TOKEN, "LOG_LEVEL": "warn"})
        env.update(extra_env)
        self.lines = []
        self.proc = subprocess.Popen([os.path.join(os.environ["CHORUS_ROOT"], "chorus"), "up"],
                                     cwd=os.environ["CHORUS_ROOT"], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def output(self):
        return "\n".join(self.lines)

    def wait_banner(self):
        def up_or_gone():
            if self.proc.poll() is not None:
                fail("chorus up exited with %d before its banner" % self.proc.returncode)
            return any("chorus is up" in line for line in self.lines)
        wait_until("the `chorus is up` banner", up_or_gone, 90)

    def processes(self):
        """name -> pid ('-' while it waits for its restart)."""
        out = {}
        try:
            with open(os.path.join(self.dir, "processes")) as f:
                for line in f:
                    name, pid = line.split()
                    out[name] = pid
        except (OSError, ValueError):
            pass
        return out

    def stop(self):
        """SIGTERM, as Ctrl-C would; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                fail("chorus up did not stop within 60 s of SIGTERM")
        self.reader.join(timeout=10)
        return self.proc.returncode

    def cleanup(self):
        if self.proc.poll() is None:
            try:
                self.stop()
            except AssertionError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def check_sanitizers(self):
        for line in self.lines:
            if "AddressSanitizer" in line or "runtime error:" in line or "LeakSanitizer" in line:
                fail("a sanitizer report in the output of up: " + line)


def redis_pid(up):
    pid = up.processes().get("redis", "-")
    if pid == "-":
        return None
    try:
        with open("/proc/%s/comm" % pid) as f:
            return int(pid) if f.read().strip() == "redis-server" else None
    except OSError:
        return None


def private_ports():
    return {"API_PORT": str(free_port()), "METRICS_PORT": str(free_range(6))}


# ---- cases -------------------------------------------------------------------

def up_survives_redis_sigkill_without_losing_accepted_checkouts():
    ports = private_ports()
    ports["REDIS_PORT"] = str(free_port())
    up = Up(ports)
    try:
        up.wait_banner()
        api = int(ports["API_PORT"])
        admin = Client(api)
        st, body = admin.call("PUT", "/api/products/" + PRODUCT,
                              {"name": "up test", "price_cents": 100, "available": 1000000},
                              {"Authorization": "Bearer " + ADMIN_TOKEN})
        if st != 200:
            fail("PUT product: %s %s" % (st, body))

        lock = threading.Lock()
        accepted = {}          # checkout_id -> time of its 202 (monotonic)
        statuses = {}          # status (or None: no answer) -> count
        wrong = []             # answers that are neither 202 nor 503
        stop = threading.Event()

        def client(t):
            c = Client(api)
            n = 0
            while not stop.is_set():
                key = "up-%d-%d" % (t, n)
                n += 1
                while not stop.is_set():
                    st, body = c.call("POST", "/api/checkouts",
                                      {"client_id": "up-test-%d" % t,
                                       "items": [{"product_id": PRODUCT, "quantity": 1}]},
                                      {"Idempotency-Key": key}, timeout=15)
                    with lock:
                        statuses[st] = statuses.get(st, 0) + 1
                    if st == 202:
                        with lock:
                            accepted[body["checkout_id"]] = time.monotonic()
                        break
                    if st not in (503, None):
                        with lock:
                            wrong.append((st, body))
                        break
                    time.sleep(0.02)   # 503 or no connection: retry with the same key
            c.close()

        threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        try:
            wait_until("50 checkouts accepted", lambda: len(accepted) >= 50, 60)
            old = redis_pid(up)
            if old is None:
                fail("no redis-server pid in %s/processes" % up.dir)
            os.kill(old, signal.SIGKILL)
            killed_at = time.monotonic()
            print("SIGKILLed redis-server %d after %d checkouts were accepted" % (old, len(accepted)), flush=True)
            wait_until("up to restart redis-server",
                       lambda: redis_pid(up) not in (None, old) or up.proc.poll() is not None, 30)
            if up.proc.poll() is not None:
                fail("chorus up exited (%d) when redis-server was killed" % up.proc.returncode)
            new = redis_pid(up)
            print("up restarted redis-server as %d" % new, flush=True)
            wait_until("50 checkouts accepted after the restart",
                       lambda: sum(1 for t in list(accepted.values()) if t > killed_at) >= 50, 60)
        finally:
            stop.set()
            for th in threads:
                th.join()
        print("answers: %s" % ", ".join("%s: %d" % kv for kv in sorted(statuses.items(), key=str)), flush=True)
        if wrong:
            fail("%d answers other than 202/503, e.g. %s" % (len(wrong), wrong[:3]))
        if up.proc.poll() is not None:
            fail("chorus up is no longer running (exit %d)" % up.proc.returncode)

        # Every 202 is in the store and reaches exactly one terminal event.
        c = Client(api)
        pending = set(accepted)
        bad = []

        def settled():
            for cid in list(pending):
                st, body = c.call("GET", "/api/event-store/replay/checkout/" + cid)
                if st == 404:
                    bad.append("%s: answered 202, unknown to the event store after the restart" % cid)
                    pending.discard(cid)
                    continue
                if st != 200:
                    continue
                types = [e.get("type") for e in body.get("events", [])]
                terms = [t for t in types if t in ("CheckoutSucceeded", "CheckoutFailed")]
                if "CheckoutInitiated" not in types:
                    bad.append("%s: no CheckoutInitiated (%s)" % (cid, types))
                    pending.discard(cid)
                elif len(terms) > 1:
                    bad.append("%s: %d terminal events" % (cid, len(terms)))
                    pending.discard(cid)
                elif terms:
                    pending.discard(cid)
            return not pending or bool(bad)
        try:
            wait_until("a terminal event for each of %d accepted checkouts" % len(accepted), settled, 90)
        except AssertionError:
            fail("%d of %d accepted checkouts without a terminal event, e.g. %s"
                 % (len(pending), len(accepted), sorted(pending)[:3]))
        if bad:
            fail("; ".join(bad[:5]))
        print("all %d accepted checkouts are in the store with one terminal event" % len(accepted))
        if up.stop() != 143:
            fail("chorus up exited %d on SIGTERM, expected 143" % up.proc.returncode)
        up.check_sanitizers()
    except AssertionError:
        print(up.output(), file=sys.stderr)
        raise
    finally:
        up.cleanup()


def up_takes_a_free_redis_port_when_the_default_is_busy():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(8)
    busy = holder.getsockname()[1]
    env = private_ports()
    env["CHORUS_REDIS_DEFAULT_PORT"] = str(busy)
    up = Up(env)
    try:
        up.wait_banner()
        out = up.output()
        m = re.search(r"port %d is in use .*the embedded Redis takes port (\d+)" % busy, out)
        if not m:
            fail("up did not say which port it took instead of %d" % busy)
        port = int(m.group(1))
        if port == busy:
            fail("up took the busy port %d" % busy)
        url = "redis://127.0.0.1:%d" % port
        if not re.search(r"^\s+redis\s+%s\s*$" % re.escape(url), out, re.M):
            fail("the banner does not show %s" % url)
        procs = up.processes()
        for name, pid in procs.items():
            if name == "redis":
                continue
            with open("/proc/%s/environ" % pid, "rb") as f:
                env_vars = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            got = env_vars.get(b"REDIS_URL", b"").decode()
            if got != url:
                fail("%s (pid %s) has REDIS_URL=%r, expected %s" % (name, pid, got, url))
        c = Client(int(env["API_PORT"]))
        st, body = c.call("POST", "/api/checkouts",
                          {"client_id": "up-port", "items": [{"product_id": "sku-espresso", "quantity": 1}]})
        if st != 202:
            fail("POST /api/checkouts: %s %s" % (st, body))
        status = None
        end = time.monotonic() + 30
        while time.monotonic() < end and status not in ("SUCCEEDED", "FAILED"):
            st, got = c.call("GET", "/api/checkouts/%s?wait_ms=5000" % body["checkout_id"], timeout=15)
            status = got.get("status") if st == 200 else None
        if status != "SUCCEEDED":
            fail("checkout on redis port %d ended %s, expected SUCCEEDED" % (port, status))
        print("default port %d busy: up took %d, %d processes use it, a checkout SUCCEEDED"
              % (busy, port, len(procs) - 1))
        if up.stop() != 143:
            fail("chorus up exited %d on SIGTERM, expected 143" % up.proc.returncode)
        up.check_sanitizers()
    except AssertionError:
        print(up.output(), file=sys.stderr)
        raise
    finally:
        up.cleanup()
        holder.close()


def up_refuses_an_explicit_busy_redis_port_in_one_line():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(8)
    busy = holder.getsockname()[1]
    env = private_ports()
    env["REDIS_PORT"] = str(busy)
    up = Up(env)
    try:
        try:
            rc = up.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            fail("chorus up did not stop with REDIS_PORT=%d busy" % busy)
        up.reader.join(timeout=10)
        if rc != 1:
            fail("chorus up exited %d with REDIS_PORT busy, expected 1" % rc)
        last = up.lines[-1] if up.lines else ""
        if not ("port %d is in use" % busy in last and "REDIS_PORT" in last):
            fail("the last line does not say REDIS_PORT %d is busy: %r" % (busy, last))
        if any(line.startswith("chorus: started") for line in up.lines):
            fail("up started processes before refusing the port")
        print("REDIS_PORT=%d busy: %s" % (busy, last))
    except AssertionError:
        print(up.output(), file=sys.stderr)
        raise
    finally:
        up.cleanup()
        holder.close()


def redis_cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), "--raw"] + list(args), capture_output=True, timeout=10)
    return out.stdout.decode().split("\n")


def up_restarts_a_killed_worker_under_its_name_and_it_resumes_at_once():
    """Issue 13 row 6: a SIGKILLed saga worker comes back under the same
    consumer name and finishes the sagas it held at once, not after
    CLAIM_IDLE_MS (30 s under up) as a new name would."""
    env = private_ports()
    env["REDIS_PORT"] = str(free_port())
    env["FAULT_ORDER_DELAY_MS"] = "100"   # order-creation holds its batch a while
    up = Up(env)
    try:
        up.wait_banner()
        api, rport = int(env["API_PORT"]), int(env["REDIS_PORT"])
        c = Client(api)
        st, body = c.call("PUT", "/api/products/" + PRODUCT,
                          {"name": "up test", "price_cents": 100, "available": 1000000},
                          {"Authorization": "Bearer " + ADMIN_TOKEN})
        if st != 200:
            fail("PUT product: %s %s" % (st, body))
        ids = []
        for i in range(20):
            st, body = c.call("POST", "/api/checkouts",
                              {"client_id": "up-kill", "items": [{"product_id": PRODUCT, "quantity": 1}]})
            if st != 202:
                fail("POST /api/checkouts: %s %s" % (st, body))
            ids.append(body["checkout_id"])

        def held():
            r = redis_cli(rport, "XPENDING", "ecommerce.checkout.events", "choreo-order")
            return int(r[0]) if r and r[0].isdigit() else 0
        wait_until("order-creation holding entries", lambda: held() > 0, 30)
        old = up.processes().get("order-creation")
        if not old or old == "-":
            fail("no order-creation pid in %s/processes" % up.dir)
        holding = held()
        os.kill(int(old), signal.SIGKILL)
        killed = time.monotonic()
        wait_until("order-creation restarted", lambda: up.processes().get("order-creation", "-") not in ("-", old), 30)
        restarted = time.monotonic()

        def all_ended():
            for cid in ids:
                st, got = c.call("GET", "/api/checkouts/%s" % cid)
                if st != 200 or got.get("status") not in ("SUCCEEDED", "FAILED"):
                    return False
            return True
        wait_until("every checkout ended", all_ended, 60)
        ended = time.monotonic()
        consumers = [l for l in redis_cli(rport, "XINFO", "CONSUMERS", "ecommerce.checkout.events", "choreo-order")
                     if l.startswith("order-creation")]
        if consumers != ["order-creation-1"]:
            fail("choreo-order consumers %r, expected only order-creation-1 (a stable name)" % consumers)
        # 20 sagas at 100 ms each is ~2 s of work; a takeover would wait 30 s
        bound = 1.0 + 2.0 + 3.0
        print("killed order-creation holding %d entries; restarted after %.2f s; all 20 sagas ended %.2f s "
              "after the restart (bound %.1f s; CLAIM_IDLE_MS 30 s)"
              % (holding, restarted - killed, ended - restarted, bound))
        if ended - restarted > bound:
            fail("the held sagas took %.1f s after the restart (bound %.1f s)" % (ended - restarted, bound))
        if up.stop() != 143:
            fail("chorus up exited %d on SIGTERM, expected 143" % up.proc.returncode)
        up.check_sanitizers()
    except AssertionError:
        print(up.output(), file=sys.stderr)
        raise
    finally:
        up.cleanup()


def cluster_master_pid(up, base):
    """(port, pid) of a node that is a master now, from the processes file."""
    procs = up.processes()
    for port in range(base, base + 6):
        role = redis_cli(port, "ROLE")
        if role and role[0] == "master":
            pid = procs.get("redis-%d" % port, "-")
            if pid != "-":
                return port, int(pid)
    fail("no master among the cluster's nodes")


def up_runs_on_an_embedded_cluster_and_a_killed_master_loses_nothing():
    """Issue 11 parts 7 and 8: CHORUS_CLUSTER=3 ./chorus up runs everything
    on an embedded 3+3 Redis Cluster; ./chorus demo works as on one node; a
    master SIGKILLed during a stream of checkouts (REDIS_WAIT_REPLICAS=1) is
    replaced by its replica, `up` restarts the node, and every 202-accepted
    checkout ends with exactly one terminal event."""
    env = private_ports()
    base = free_range(6, also=10000)   # node ports and their cluster bus ports
    env.update({"CHORUS_CLUSTER": "3", "CHORUS_CLUSTER_PORT": str(base), "PARTITIONS": "8",
                "REDIS_WAIT_REPLICAS": "1"})
    up = Up(env)
    try:
        up.wait_banner()
        out = up.output()
        if "redis cluster: 3 masters + 3 replicas" not in out or "PARTITIONS=8" not in out:
            fail("the banner does not announce the cluster with PARTITIONS=8")
        # redis-cli's slot ranges give the masters 2, 2 and 4 of the 8
        # partitions; up moves the empty slots so they differ by one at most
        m = re.search(r"the masters own ([0-9 ]+) of 8 partitions", out)
        owned = [int(x) for x in m.group(1).split()] if m else []
        if len(owned) != 3 or sum(owned) != 8 or max(owned) - min(owned) > 1:
            fail("partitions not balanced over the masters: %r" % (m.group(0) if m else None))
        api = int(env["API_PORT"])
        demo = subprocess.run([os.path.join(os.environ["CHORUS_ROOT"], "chorus"), "demo"],
                              cwd=os.environ["CHORUS_ROOT"], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, API_PORT=env["API_PORT"], CHORUS_DATA_DIR=up.dir))
        if demo.returncode != 0 or "SUCCEEDED" not in demo.stdout or "FAILED" not in demo.stdout:
            fail("./chorus demo on the cluster: exit %d\n%s\n%s" % (demo.returncode, demo.stdout, demo.stderr))
        c = Client(api)
        st, body = c.call("PUT", "/api/products/" + PRODUCT,
                          {"name": "up test", "price_cents": 100, "available": 1000000},
                          {"Authorization": "Bearer " + ADMIN_TOKEN})
        if st != 200:
            fail("PUT product: %s %s" % (st, body))
        port, pid = cluster_master_pid(up, base)
        accepted, refused = [], 0
        killed = False
        end = time.monotonic() + 60
        while len(accepted) < 120 and time.monotonic() < end:
            if len(accepted) == 40 and not killed:
                os.kill(pid, signal.SIGKILL)
                killed = True
            st, body = c.call("POST", "/api/checkouts",
                              {"client_id": "up-cluster", "items": [{"product_id": PRODUCT, "quantity": 1}]},
                              {"Idempotency-Key": "k%d" % (len(accepted) + refused)})
            if st == 202:
                accepted.append(body["checkout_id"])
            elif st == 503:
                refused += 1
                time.sleep(0.05)
            else:
                fail("POST /api/checkouts during the failover: %s %s" % (st, body))
        if len(accepted) < 120:
            fail("only %d checkouts accepted in 60 s (%d answered 503)" % (len(accepted), refused))

        def all_ended():
            for cid in accepted:
                st, got = c.call("GET", "/api/checkouts/%s" % cid)
                if st != 200 or got.get("status") not in ("SUCCEEDED", "FAILED"):
                    return False
            return True
        wait_until("every accepted checkout ended", all_ended, 90)
        for cid in accepted:
            st, page = c.call("GET", "/api/event-store/replay/checkout/%s" % cid)
            if st != 200:
                fail("history of %s: %s %s" % (cid, st, page))
            terminals = [e["type"] for e in page.get("events", [])
                         if e["type"] in ("CheckoutSucceeded", "CheckoutFailed")]
            if len(terminals) != 1:
                fail("checkout %s has terminal events %s, expected exactly one" % (cid, terminals))
        wait_until("the killed node restarted", lambda: up.processes().get("redis-%d" % port, "-")
                   not in ("-", str(pid)), 30)
        st, prod = c.call("GET", "/api/products/" + PRODUCT)
        if st != 200 or prod["available"] + prod["reserved"] + prod["sold"] != 1000000 or prod["reserved"] != 0:
            fail("stock not conserved after the failover: %s" % prod)
        print("cluster: demo ok; master :%d SIGKILLed after 40 of %d accepted checkouts (%d answered 503); "
              "each ended once; stock conserved" % (port, len(accepted), refused))
        if up.stop() != 143:
            fail("chorus up exited %d on SIGTERM, expected 143" % up.proc.returncode)
        up.check_sanitizers()
    except AssertionError:
        print(up.output(), file=sys.stderr)
        raise
    finally:
        up.cleanup()


CASES = [up_refuses_an_explicit_busy_redis_port_in_one_line,
         up_takes_a_free_redis_port_when_the_default_is_busy,
         up_restarts_a_killed_worker_under_its_name_and_it_resumes_at_once,
         up_survives_redis_sigkill_without_losing_accepted_checkouts,
         up_runs_on_an_embedded_cluster_and_a_killed_master_loses_nothing]


def main(argv):
    for tool in ("redis-server", "curl"):
        if not shutil.which(tool):
            print("SKIP: %s not installed" % tool)
            return 77
    chosen = [c for c in CASES if len(argv) < 2 or c.__name__ in argv[1:]]
    if not chosen:
        print("no case named %s; cases: %s" % (argv[1:], [c.__name__ for c in CASES]), file=sys.stderr)
        return 2
    failed = 0
    for case in chosen:
        t0 = time.monotonic()
        print("== %s" % case.__name__, flush=True)
        try:
            case()
            print("ok %s (%.1f s)" % (case.__name__, time.monotonic() - t0), flush=True)
        except AssertionError as e:
            failed += 1
            print("FAIL %s: %s" % (case.__name__, e), file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
