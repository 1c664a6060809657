#!/usr/bin/env python3
"""prometheus_scrape.py - a real Prometheus scrapes a live chorus platform
with the shipped scrape config and alert rules, and reads back what the test
did.

The compose topology is started as local processes (compose_topology.py's
start_platform: redis-server, the API and the six workers on free loopback
ports). compose/prometheus/prometheus.yml is rewritten only where a container
name cannot work here: each target `<service>:<port>` (checked against the
compose file) becomes 127.0.0.1:<that process's port>, the intervals become
1 s, the rule file path absolute. `prometheus` then runs on a free port with
its TSDB in a temp dir. The test:
  - waits until every target is up;
  - seeds a product with 3 units, posts 4 checkouts of 1 (3 SUCCEEDED, 1
    FAILED insufficient_stock) and one GET of an unknown checkout (404);
  - reads back through /api/v1/query: the API's 202 count, the sagas'
    success and failure-by-reason counters, the projection's e2e histogram
    count, one worker_lag series per group;
  - runs every Grafana dashboard query (variables substituted) and requires
    data from each, so a panel naming a series nobody serves fails here;
  - parks an undecodable bus entry: ChorusDeadLetter fires for every group;
  - SIGKILLs the audit worker: up{service="audit"} drops to 0 and
    ChorusWorkerDown is pending for it.

Environment (tests/meson.build): CHORUS_COMPOSE_FILE, CHORUS_API_BIN,
CHORUS_WORKER_BIN. Exit 0 on success, 1 on any failure, including
`prometheus`, redis-server or python3-yaml missing (never a skip).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    import yaml
except ImportError:
    print("FAIL: python3-yaml not installed (./chorus deps installs docker-compose, which brings it)",
          file=sys.stderr)
    sys.exit(1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compose_topology as topo  # noqa: E402  (after the path is set)

ADMIN_TOKEN = "prometheus-scrape-token"
DEADLINE_S = 30
PRODUCT = "sku-prom"
SUCCEEDED_N = 3           # checkouts that find stock (the product has 3 units)

fail = topo.fail


class Prometheus:
    """A prometheus process on 127.0.0.1:port with its TSDB under dir."""

    def __init__(self, binary, config, dir_):
        self.port = topo.free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        self.log = open(os.path.join(dir_, "prometheus.log"), "w+")
        self.proc = subprocess.Popen(
            [binary, "--config.file=" + config, "--storage.tsdb.path=" + os.path.join(dir_, "tsdb"),
             "--web.listen-address=127.0.0.1:%d" % self.port, "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path, **params):
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"{}")

    def query(self, promql):
        """The result vector of an instant query; a query error fails."""
        r = self.get("/api/v1/query", query=promql)
        if r.get("status") != "success":
            fail("query %r: %s %s" % (promql, r.get("errorType"), r.get("error")))
        return r["data"]["result"]

    def value(self, promql):
        """The single sample of promql as a float, or None when it has none."""
        res = self.query(promql)
        if len(res) > 1:
            fail("query %r returned %d series, expected one" % (promql, len(res)))
        return float(res[0]["value"][1]) if res else None

    def alerts(self, name, state):
        return [a["labels"] for a in self.get("/api/v1/alerts")["data"]["alerts"]
                if a["labels"].get("alertname") == name and a["state"] == state]

    def check_alive(self):
        if self.proc.poll() is not None:
            self.log.seek(0)
            fail("prometheus exited with %d:\n%s" % (self.proc.returncode, self.log.read()[-3000:]))

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def wait_for(what, cond, prom, deadline_s=DEADLINE_S):
    """Polls cond() until it returns a true value (returned) or the deadline;
    the failure names what was awaited and the last thing cond saw."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        prom.check_alive()
        try:
            r = cond()
            if r:
                return r
        except (OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(0.1)
    fail("timed out after %d s waiting for %s (last error: %s)" % (deadline_s, what, last))


def scrape_config(shipped, pf, alerts_file, path):
    """Writes the shipped prometheus.yml with its targets pointed at the local
    processes; every target must be a compose service on the port its
    environment gives it."""
    with open(shipped) as f:
        cfg = yaml.safe_load(f)
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    cfg["rule_files"] = [alerts_file]
    n = 0
    for sc in cfg["scrape_configs"]:
        for st in sc["static_configs"]:
            local = []
            for t in st["targets"]:
                svc, _, port = t.rpartition(":")
                if svc not in pf.ports:
                    fail("prometheus.yml target %s: no compose service %r serving metrics" % (t, svc))
                if int(port) != pf.ports[svc][0]:
                    fail("prometheus.yml target %s: the compose service serves on %d" % (t, pf.ports[svc][0]))
                local.append("127.0.0.1:%d" % pf.ports[svc][1])
                n += 1
            st["targets"] = local
    if n != len(pf.ports):
        fail("prometheus.yml scrapes %d targets, the compose file has %d metrics services" % (n, len(pf.ports)))
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return n


def checkout(base, product, qty):
    st, body = topo.http("POST", base + "/api/checkouts",
                         {"client_id": "prom", "items": [{"product_id": product, "quantity": qty}]})
    if st != 202:
        fail("POST /api/checkouts: %d %s" % (st, body))
    cid = body["checkout_id"]
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        st, c = topo.http("GET", "%s/api/checkouts/%s?wait_ms=5000" % (base, cid), timeout=15)
        if c.get("status") in ("SUCCEEDED", "FAILED"):
            return c
    fail("checkout %s did not end within %d s" % (cid, DEADLINE_S))


def redis_cmd(port, *args):
    """One command over RESP; returns the first reply line."""
    req = "*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a.encode()), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req.encode())
        return s.recv(256).split(b"\r\n")[0].decode()


def dashboard_queries(dashboard):
    """(title, promql) of every dashboard target, Grafana's variables given
    the values it would send (the rate interval sized for 1 s scrapes)."""
    with open(dashboard) as f:
        dash = json.load(f)
    subst = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "1s"}
    for v in dash["templating"]["list"]:
        subst["$" + v["name"]] = v.get("allValue") or ".*"
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                e = t["expr"]
                for k in sorted(subst, key=len, reverse=True):
                    e = e.replace(k, subst[k])
                out.append(("%s/%s" % (p["title"], t["refId"]), e))
            walk(p.get("panels", []))
    walk(dash["panels"])
    return out


def main():
    compose_file = os.environ["CHORUS_COMPOSE_FILE"]
    compose_dir = os.path.dirname(os.path.abspath(compose_file))
    bins = {"chorus-api": os.environ["CHORUS_API_BIN"],
            "chorus-worker": os.environ["CHORUS_WORKER_BIN"]}
    prom_bin = shutil.which("prometheus")
    if not prom_bin:
        fail("prometheus not found: install the Debian package `prometheus` (./chorus deps)")
    redis_bin = shutil.which("redis-server")
    if not redis_bin:
        fail("redis-server not found (./chorus deps)")
    with open(compose_file) as f:
        compose = yaml.safe_load(f)

    pf = topo.start_platform(compose, bins, ADMIN_TOKEN, redis_bin)
    tmp = tempfile.mkdtemp(prefix="chorus-prom-")
    prom = None
    try:
        cfg = os.path.join(tmp, "prometheus.yml")
        ntargets = scrape_config(os.path.join(compose_dir, "prometheus", "prometheus.yml"), pf,
                                 os.path.join(compose_dir, "prometheus", "alerts.yml"), cfg)
        prom = Prometheus(prom_bin, cfg, tmp)
        wait_for("prometheus /-/ready", lambda: urllib.request.urlopen(prom.base + "/-/ready", timeout=2).status
                 == 200, prom)

        def all_up():
            ts = prom.get("/api/v1/targets")["data"]["activeTargets"]
            return len(ts) == ntargets and all(t["health"] == "up" for t in ts)
        wait_for("all %d targets up" % ntargets, all_up, prom)
        rules = prom.get("/api/v1/rules")["data"]["groups"]
        nrules = sum(len(g["rules"]) for g in rules)
        with open(os.path.join(compose_dir, "prometheus", "alerts.yml")) as f:
            shipped = len(re.findall(r"^\s*- alert:", f.read(), re.M))
        if nrules != shipped or shipped < 6 or any(r.get("health") not in ("ok", "unknown") for g in rules for r in g["rules"]):
            fail("alert rules not loaded healthy: %s" % json.dumps(rules)[:2000])
        print("prometheus on %s: %d targets up, %d alert rules" % (prom.base, ntargets, nrules), flush=True)

        # What the test does: 3 successes, 1 stock failure, one 404.
        st, body = topo.http("PUT", pf.base + "/api/products/" + PRODUCT,
                             {"name": "Prometheus mug", "price_cents": 900, "available": SUCCEEDED_N},
                             {"Authorization": "Bearer " + ADMIN_TOKEN})
        if st != 200:
            fail("admin PUT: %d %s" % (st, body))
        ends = [checkout(pf.base, PRODUCT, 1)["status"] for _ in range(SUCCEEDED_N + 1)]
        if ends != ["SUCCEEDED"] * SUCCEEDED_N + ["FAILED"]:
            fail("checkouts ended %s" % ends)
        st, _ = topo.http("GET", pf.base + "/api/checkouts/no-such-checkout")
        if st != 404:
            fail("GET of an unknown checkout: %d, expected 404" % st)

        # Read back through Prometheus what the platform counted.
        expect = [
            ('sum(http_requests_total{method="POST",route="/api/checkouts",status="202"})', SUCCEEDED_N + 1),
            ('sum(http_requests_total{method="GET",route="/api/checkouts/{id}",status="404"})', 1),
            ("sum(saga_choreo_success_total)", SUCCEEDED_N),
            ('sum(saga_choreo_failed_total{reason="insufficient_stock"})', 1),
            ("sum(saga_choreo_failed_total)", 1),
            ("sum(checkout_e2e_seconds_count)", SUCCEEDED_N + 1),
            ("count(worker_lag)", 6),
            ('count(up{job=~"chorus-api|chorus-workers"} == 1)', ntargets),
        ]
        for q, want in expect:
            wait_for("%s == %s" % (q, want), lambda: prom.value(q) == want, prom)
            print("  %s = %s" % (q, want), flush=True)

        # Every dashboard panel's query runs and has data.
        queries = dashboard_queries(os.path.join(compose_dir, "grafana", "dashboards", "chorus.json"))
        for title, q in queries:
            wait_for("data for dashboard panel %s: %s" % (title, q), lambda: prom.query(q), prom, 15)
        print("dashboard: all %d queries return data" % len(queries), flush=True)

        # An entry no worker can decode (no `type`): every group parks it.
        groups = sorted(s["metric"]["group"] for s in prom.query("worker_lag"))
        rid = redis_cmd(pf.rport, "XADD", "ecommerce.checkout.events", "*", "payload", "not an event")
        if not rid or rid[0] != "$":
            fail("XADD of the poison entry: %r" % rid)
        wait_for("ChorusDeadLetter firing for every group %s" % groups,
                 lambda: sorted(a["group"] for a in prom.alerts("ChorusDeadLetter", "firing")) == groups, prom)
        print("ChorusDeadLetter firing for %d groups" % len(groups), flush=True)

        # A worker killed: its target goes down and the alert is pending.
        pf.procs["audit"].send_signal(signal.SIGKILL)
        pf.procs["audit"].wait()
        wait_for("up{service=\"audit\"} == 0", lambda: prom.value('up{service="audit"}') == 0, prom)
        wait_for("ChorusWorkerDown pending for audit",
                 lambda: [a["service"] for a in prom.alerts("ChorusWorkerDown", "pending")] == ["audit"], prom)
        if prom.alerts("ChorusApiDown", "pending") or prom.alerts("ChorusApiDown", "firing"):
            fail("ChorusApiDown while the API is up")
        print("audit killed: up 0, ChorusWorkerDown pending", flush=True)
        return 0
    finally:
        if prom is not None:
            prom.close()
        pf.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print("FAIL: %s" % e, file=sys.stderr)
        sys.exit(1)
