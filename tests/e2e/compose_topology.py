#!/usr/bin/env python3
"""compose_topology.py - the docker-compose topology, run as local processes.

Reads compose/docker-compose.yml and starts what it describes without a
container engine: a private redis-server on a free loopback port in a temp
dir for the `redis` service, then every other service as a local process with
the same command (chorus-api / chorus-worker mapped to the build's binaries)
and the same environment, rewriting only REDIS_URL's host:port and the ports
(API_PORT / METRICS_PORT -> free ports). Services that do not run the chorus
image (prometheus, grafana: monitoring, exercised by prometheus_scrape.py) are
not started. Then a saga runs through it: one product seeded through the admin
PUT, one checkout posted, SUCCEEDED awaited. Every process is stopped with
SIGTERM and must exit 0. First, the compose file must refuse to start
without CHORUS_ADMIN_TOKEN (no default token), and the Redis Cluster
override (docker-compose.cluster.yml) must merge into a valid cluster
topology (`docker-compose config`).

start_platform() / Platform are shared with prometheus_scrape.py (imported
from this directory).

Environment (set by tests/meson.build): CHORUS_COMPOSE_FILE, CHORUS_API_BIN,
CHORUS_WORKER_BIN. Exit 0 on success; 77 (meson: skipped) if python3-yaml or
redis-server is missing; 1 on any failure.
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
import urllib.request
from testlib import fail, free_port, wait_until  # noqa: E402

try:
    import yaml
except ImportError:
    print("SKIP: python3-yaml not installed (./chorus deps installs docker-compose, which brings it)")
    sys.exit(77)

ADMIN_TOKEN = "compose-topology-token"
DEADLINE_S = 30
# Settings from the caller's environment that must not leak into a service:
# each process gets exactly what the compose file gives it (plus PATH, ASAN_*..).
SCRUB_ENV = {"REDIS_URL", "API_PORT", "METRICS_PORT", "CHORUS_ADMIN_TOKEN", "ORDER_LIMIT_CENTS",
             "SAGA_TIMEOUT_MS", "FAULT_ORDER_FAIL_RATE", "NOTIFY_WEBHOOK_URL", "MAX_DELIVERIES",
             "CLAIM_IDLE_MS", "EVENT_RETENTION_DAYS"}


def interpolate(value, env):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} and
    ${VAR?error} in a string; a required variable that is missing (or empty,
    with :?) fails with compose's message, as `docker compose` would."""
    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        unset, empty = name not in env, env.get(name, "") == ""
        if op in (":?", "?"):
            if unset or (op == ":?" and empty):
                fail("compose requires %s: %s" % (name, arg or "not set"))
            return env[name]
        if not unset and (not empty or op != ":-"):
            return env[name]
        return arg if op else ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", sub, str(value))


def service_env(svc, interp):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, os.environ.get(e, "")) for e in env)
    return {k: interpolate(v, interp) for k, v in env.items()}


def http(method, url, body=None, headers=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def redis_ping(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def chorus_image(svc):
    """True for a service that runs the chorus image (the API, a worker)."""
    return "build" in svc or str(svc.get("image", "")).startswith("chorus:")


class Platform:
    """The compose file's chorus services running as local processes.

    redis (Popen) and procs (service name -> Popen) are owned here and killed
    by close(); ports maps each service to (port in the compose file, local
    port); base is the API's URL."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="chorus-compose-")
        self.redis = None
        self.rport = None
        self.procs = {}
        self.ports = {}
        self.base = None

    def close(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.redis is not None:
            self.redis.terminate()
            try:
                self.redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def start_platform(compose, bins, admin_token, redis_bin):
    """Starts redis and every chorus service of the parsed compose file and
    waits for the API's /ready. Returns a Platform the caller must close();
    on failure it closes what it started and raises AssertionError."""
    services = compose["services"]
    if "redis" not in services:
        fail("no redis service in the compose file")
    pf = Platform()
    try:
        # Redis: the service's own command (AOF settings), on a private port and dir.
        pf.rport = free_port()
        rcmd = list(services["redis"].get("command") or ["redis-server"])
        rcmd[0] = redis_bin
        rcmd += ["--port", str(pf.rport), "--bind", "127.0.0.1", "--dir", pf.tmp,
                 "--save", "", "--daemonize", "no"]
        pf.redis = subprocess.Popen(rcmd, stdout=subprocess.DEVNULL)
        wait_until("redis-server PING", lambda: redis_ping(pf.rport))

        interp = dict(os.environ)
        interp["CHORUS_ADMIN_TOKEN"] = admin_token
        api_port = None
        for name, svc in services.items():
            if name == "redis":
                continue
            if not chorus_image(svc):
                print("not started: %s (image %s)" % (name, svc.get("image")), flush=True)
                continue
            cmd = list(svc.get("command") or [])
            if not cmd or cmd[0] not in bins:
                fail("service %s: command %r is not a chorus binary" % (name, cmd))
            cmd[0] = bins[cmd[0]]
            env = service_env(svc, interp)
            if "REDIS_URL" in env:
                env["REDIS_URL"] = re.sub(r"^(redis://(?:[^@/]*@)?)[^/:]+(?::\d+)?",
                                          r"\g<1>127.0.0.1:%d" % pf.rport, env["REDIS_URL"])
            for key in ("API_PORT", "METRICS_PORT"):
                if key in env:
                    local = free_port()
                    pf.ports[name] = (int(env[key]), local)
                    env[key] = str(local)
            if "API_PORT" in env:
                api_port = int(env["API_PORT"])
            penv = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
            penv.update(env)
            print("start %s: %s %s" % (name, " ".join(cmd),
                  " ".join("%s=%s" % kv for kv in sorted(env.items()))), flush=True)
            pf.procs[name] = subprocess.Popen(cmd, env=penv)
        if api_port is None:
            fail("no service sets API_PORT")
        pf.base = "http://127.0.0.1:%d" % api_port

        def ready():
            for n, p in pf.procs.items():
                if p.poll() is not None:
                    fail("%s exited early with %d" % (n, p.returncode))
            return http("GET", pf.base + "/ready", timeout=2)[0] == 200
        wait_until("/ready", ready)
        return pf
    except BaseException:
        pf.close()
        raise


def check_admin_token_required(compose_file, compose):
    """The compose file gives CHORUS_ADMIN_TOKEN no default (issue 13 row 10:
    it shipped `change-me` on a published port): unset or empty, compose
    must refuse to start. Checked with the interpolation here and, when
    docker-compose is installed, with `docker-compose config -q` itself."""
    api = [n for n, svc in compose["services"].items()
           if "CHORUS_ADMIN_TOKEN" in (svc.get("environment") or {})]
    if not api:
        fail("no service of %s reads CHORUS_ADMIN_TOKEN" % compose_file)
    env = {k: v for k, v in os.environ.items() if k != "CHORUS_ADMIN_TOKEN"}
    for value in (None, ""):
        if value is not None:
            env["CHORUS_ADMIN_TOKEN"] = value
        for name in api:
            try:
                got = service_env(compose["services"][name], env)["CHORUS_ADMIN_TOKEN"]
            except AssertionError:
                continue
            fail("service %s: CHORUS_ADMIN_TOKEN %s gives the token %r; compose must refuse instead"
                 % (name, "unset" if value is None else "empty", got))
    dc = shutil.which("docker-compose")
    if dc:
        p = subprocess.run([dc, "-f", compose_file, "config", "-q"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode == 0 or "CHORUS_ADMIN_TOKEN" not in p.stdout:
            fail("docker-compose config without CHORUS_ADMIN_TOKEN: exit %d, %r; expected a refusal naming it"
                 % (p.returncode, p.stdout[-500:]))
        print("docker-compose refuses to start without CHORUS_ADMIN_TOKEN", flush=True)
    print("compose requires CHORUS_ADMIN_TOKEN (no default)", flush=True)


def check_cluster_override(compose_file):
    """compose/docker-compose.cluster.yml over the base file: docker-compose
    merges them into six cluster-enabled Redis nodes, a cluster-init that
    waits for all of them, and every chorus service on a redis-cluster://
    URL naming all six nodes, started after cluster-init, with one
    PARTITIONS for all (the caller's PARTITIONS passes through). Needs
    docker-compose (the merge rules are its own); skipped without it."""
    override = os.path.join(os.path.dirname(compose_file), "docker-compose.cluster.yml")
    dc = shutil.which("docker-compose")
    if not dc:
        print("docker-compose not installed: cluster override not checked", flush=True)
        return
    env = dict(os.environ, CHORUS_ADMIN_TOKEN=ADMIN_TOKEN, PARTITIONS="12")
    p = subprocess.run([dc, "-f", compose_file, "-f", override, "config"], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        fail("docker-compose config with the cluster override: exit %d: %s" % (p.returncode, p.stderr[-800:]))
    merged = yaml.safe_load(p.stdout)["services"]
    nodes = sorted(n for n, svc in merged.items()
                   if "--cluster-enabled" in (svc.get("command") or []))
    if nodes != ["redis", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6"]:
        fail("cluster-enabled nodes: %s, expected redis and redis-2..6" % nodes)
    for n in nodes:
        cmd = merged[n]["command"]
        if cmd[cmd.index("--appendonly") + 1] != "yes":
            fail("cluster node %s runs without AOF: %s" % (n, cmd))
    init = merged.get("cluster-init")
    if not init or sorted((init.get("depends_on") or {}).keys()) != nodes:
        fail("cluster-init must wait for every node: %r" % (init and init.get("depends_on")))
    script = init["command"][0]
    if "--cluster create" not in script or "--cluster-replicas 1" not in script:
        fail("cluster-init does not create a cluster with one replica per master: %r" % script)
    # the partitions balanced over the masters by the repository's own
    # tools/cluster_up.sh (as `CHORUS_CLUSTER=3 ./chorus up` does), with the
    # caller's PARTITIONS
    mounts = {}
    for v in init.get("volumes") or []:
        src, dst = (v["source"], v["target"]) if isinstance(v, dict) else v.split(":")[:2]
        mounts[dst] = src
    tool = mounts.get("/usr/local/bin/cluster_up.sh", "")
    if os.path.realpath(tool) != os.path.realpath(os.path.join(os.path.dirname(compose_file), "..", "tools",
                                                              "cluster_up.sh")):
        fail("cluster-init does not mount tools/cluster_up.sh: %r" % mounts)
    if "cluster_up.sh balance redis:6379" not in script or \
            str((init.get("environment") or {}).get("PARTITIONS")) != "12":
        fail("cluster-init does not balance the caller's PARTITIONS: %r %r" % (script, init.get("environment")))
    sh = subprocess.run(["sh", "-n"], input=script, text=True, stderr=subprocess.PIPE)
    if sh.returncode != 0:
        fail("cluster-init's script does not parse: %s" % sh.stderr)
    chorus = [n for n, svc in merged.items() if str(svc.get("image", "")).startswith("chorus")]
    if len(chorus) != 7:
        fail("expected the API and six workers on the chorus image, got %s" % chorus)
    for n in chorus:
        e = merged[n].get("environment") or {}
        url = e.get("REDIS_URL", "")
        hosts = sorted(h.split(":")[0] for h in url[len("redis-cluster://"):].split(","))
        if not url.startswith("redis-cluster://") or hosts != nodes:
            fail("service %s: REDIS_URL %r must be redis-cluster:// naming every node" % (n, url))
        if str(e.get("PARTITIONS")) != "12":
            fail("service %s: PARTITIONS %r, expected the caller's 12" % (n, e.get("PARTITIONS")))
        dep = (merged[n].get("depends_on") or {}).get("cluster-init") or {}
        if dep.get("condition") != "service_completed_successfully":
            fail("service %s does not wait for cluster-init to complete: %r" % (n, dep))
    print("cluster override: 6 nodes, cluster-init, %d chorus services on redis-cluster:// with PARTITIONS"
          % len(chorus), flush=True)


def main():
    compose_file = os.environ["CHORUS_COMPOSE_FILE"]
    bins = {"chorus-api": os.environ["CHORUS_API_BIN"],
            "chorus-worker": os.environ["CHORUS_WORKER_BIN"]}
    redis_bin = shutil.which("redis-server")
    if not redis_bin:
        print("SKIP: redis-server not installed")
        return 77
    with open(compose_file) as f:
        compose = yaml.safe_load(f)
    check_admin_token_required(compose_file, compose)
    check_cluster_override(compose_file)

    pf = start_platform(compose, bins, ADMIN_TOKEN, redis_bin)
    try:
        procs, base = pf.procs, pf.base
        st, body = http("PUT", base + "/api/products/sku-topology",
                        {"name": "Topology mug", "price_cents": 1200, "available": 5},
                        {"Authorization": "Bearer " + ADMIN_TOKEN})
        if st != 200:
            fail("admin PUT (token from the compose file's ${CHORUS_ADMIN_TOKEN}): %d %s" % (st, body))
        st, body = http("POST", base + "/api/checkouts",
                        {"client_id": "compose", "items": [{"product_id": "sku-topology", "quantity": 2}]})
        if st != 202:
            fail("POST /api/checkouts: %d %s" % (st, body))
        cid = body["checkout_id"]
        end = time.monotonic() + DEADLINE_S
        status = None
        while time.monotonic() < end:
            st, c = http("GET", "%s/api/checkouts/%s?wait_ms=5000" % (base, cid), timeout=15)
            status = c.get("status")
            if status in ("SUCCEEDED", "FAILED"):
                break
        if status != "SUCCEEDED":
            fail("checkout %s ended %s, expected SUCCEEDED" % (cid, status))
        print("checkout %s SUCCEEDED through %d services" % (cid, len(procs)), flush=True)

        # Stop: API first, then the workers, all with SIGTERM; each must exit 0.
        order = [n for n in procs if n == "api"] + [n for n in procs if n != "api"]
        for n in order:
            procs[n].send_signal(signal.SIGTERM)
        bad = []
        for n in order:
            try:
                rc = procs[n].wait(timeout=15)
            except subprocess.TimeoutExpired:
                procs[n].kill()
                rc = "no exit within 15 s"
            if rc != 0:
                bad.append("%s: %s" % (n, rc))
        if bad:
            fail("not a clean exit on SIGTERM: " + ", ".join(bad))
        print("all %d services exited 0 on SIGTERM" % len(procs))
        return 0
    finally:
        pf.close()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print("FAIL: %s" % e, file=sys.stderr)
        sys.exit(1)
