#!/usr/bin/env python3
"""check_monitoring.py - the shipped Prometheus and Grafana files are valid
and agree with each other and with the compose file.

  1. `promtool check config` on compose/prometheus/prometheus.yml and
     `promtool check rules` on compose/prometheus/alerts.yml;
  2. `promtool test rules` on tests/monitoring/alerts_test.yml (each alert
     fires when it should and not otherwise);
  3. every PromQL expression of the Grafana dashboard parses: Grafana's
     variables are substituted, each expr becomes a recording rule in a temp
     rules file, and promtool checks it. A known-broken expr is put through
     the same check first and must be rejected, so the check can fail;
  4. the scrape targets are exactly the compose services that serve /metrics
     (API_PORT / METRICS_PORT), by service name and port, in the jobs the
     alerts name; the dashboard uses the provisioned datasource and covers the
     series the brief lists; compose mounts the files read-only.

Environment (tests/meson.build): CHORUS_SOURCE_ROOT. Exit 0 on success, 1 on
any failure, including promtool or python3-yaml missing (never a skip).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.environ.get("CHORUS_SOURCE_ROOT") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))
COMPOSE = os.path.join(ROOT, "compose", "docker-compose.yml")
PROM_YML = os.path.join(ROOT, "compose", "prometheus", "prometheus.yml")
ALERTS_YML = os.path.join(ROOT, "compose", "prometheus", "alerts.yml")
ALERTS_TEST = os.path.join(ROOT, "tests", "monitoring", "alerts_test.yml")
DASHBOARD = os.path.join(ROOT, "compose", "grafana", "dashboards", "chorus.json")
DATASOURCES = os.path.join(ROOT, "compose", "grafana", "provisioning", "datasources", "prometheus.yml")
PROVIDERS = os.path.join(ROOT, "compose", "grafana", "provisioning", "dashboards", "chorus.yml")

# Series the dashboard must show (the list: sagas/s, outcome by
# reason, accept->terminal quantiles, lag and pending per group, dead letters,
# HTTP rate/errors/latency by route, process up).
REQUIRED_SERIES = ["checkouts_accepted_total", "saga_choreo_success_total", "saga_choreo_failed_total",
                   "checkout_e2e_seconds_bucket", "worker_lag", "worker_pending", "dead_letters_total",
                   "http_requests_total", "http_request_duration_seconds_bucket", "up"]

# What Grafana puts in place of its built-in variables when it runs a query.
GRAFANA_VARS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h",
                "__range_s": "3600", "__range_ms": "3600000", "__interval_ms": "15000"}


class Failure(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise Failure(msg)


def run(cmd):
    """Runs cmd; returns (exit code, stdout+stderr)."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return p.returncode, p.stdout


def promtool(*args):
    rc, out = run(["promtool"] + list(args))
    print("$ promtool %s -> %d\n%s" % (" ".join(args), rc, out.rstrip()), flush=True)
    return rc, out


def substitute(expr, variables):
    """expr with Grafana's $name, ${name} and [[name]] replaced from variables
    (built-ins first, then the dashboard's template variables); a variable
    nobody defines is a failure, not left in the query."""
    def sub(m):
        name = m.group(1) or m.group(2) or m.group(3)
        need(name in variables, "expr %r uses $%s, which the dashboard does not define" % (expr, name))
        return variables[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", sub, expr)


def dashboard_exprs(dash):
    """[(where, expr)] for every target of every panel (rows included)."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if "expr" in t:
                    out.append(("panel %s %r target %s" % (p.get("id"), p.get("title"), t.get("refId")),
                                t["expr"]))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    return out


def template_vars(dash):
    """Template variable name -> what Grafana sends for "All" (allValue), or
    the first option; plus the PromQL inside label_values() queries."""
    values, queries = dict(GRAFANA_VARS), []
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query":
            m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", q or "")
            need(m, "template variable %s: query %r is not label_values(<series>, <label>)" % (v["name"], q))
            queries.append(("variable %s" % v["name"], m.group(1)))
        if v.get("includeAll"):
            values[v["name"]] = v.get("allValue") or ".*"
        else:
            opts = v.get("options") or []
            need(opts, "template variable %s has no allValue and no options" % v["name"])
            values[v["name"]] = opts[0]["value"]
    return values, queries


def check_exprs(exprs, tmp):
    """promtool check rules on one recording rule per expr; returns
    (ok, output). Named exprs are (where, promql)."""
    path = os.path.join(tmp, "dashboard_exprs.yml")
    with open(path, "w") as f:
        f.write("groups:\n  - name: dashboard\n    rules:\n")
        for i, (where, e) in enumerate(exprs):
            f.write("      # %s\n      - record: dashboard:expr_%d\n        expr: %s\n"
                    % (where.replace("\n", " "), i, json.dumps(e)))
    rc, out = promtool("check", "rules", path)
    return rc == 0, out


def check_promql(tmp):
    with open(DASHBOARD) as f:
        dash = json.load(f)
    variables, var_queries = template_vars(dash)
    exprs = [(w, substitute(e, variables)) for w, e in dashboard_exprs(dash)] + var_queries
    need(len(exprs) >= 10, "dashboard has only %d exprs" % len(exprs))

    # The check must be able to fail: a broken expr through the same path.
    ok, _ = check_exprs([("negative control", substitute(
        'sum by (group) (rate(worker_lag{group=~"$group"}[$__rate_interval])', variables))], tmp)
    need(not ok, "promtool accepted a broken expr (unbalanced parenthesis): the dashboard check proves nothing")

    ok, out = check_exprs(exprs, tmp)
    if not ok:
        # Name the broken ones.
        bad = [w + ": " + e for w, e in exprs if not check_exprs([(w, e)], tmp)[0]]
        raise Failure("dashboard PromQL does not parse:\n  " + "\n  ".join(bad or [out]))
    print("dashboard: %d exprs parse" % len(exprs), flush=True)

    used = " ".join(e for _, e in exprs)
    missing = [s for s in REQUIRED_SERIES if not re.search(r"\b%s\b" % re.escape(s), used)]
    need(not missing, "dashboard shows none of: " + ", ".join(missing))
    return dash


def check_wiring(yaml, dash):
    with open(COMPOSE) as f:
        compose = yaml.safe_load(f)
    with open(PROM_YML) as f:
        prom = yaml.safe_load(f)
    services = compose["services"]

    # Which compose services serve /metrics, on which port.
    want = {}
    for name, svc in services.items():
        env = svc.get("environment") or {}
        need(isinstance(env, dict), "service %s: environment as a list is not handled here" % name)
        for key in ("API_PORT", "METRICS_PORT"):
            if key in env:
                want[name] = (int(env[key]), "chorus-api" if key == "API_PORT" else "chorus-workers")
    need(want, "no compose service serves metrics")

    got = {}
    for sc in prom["scrape_configs"]:
        need(sc.get("metrics_path", "/metrics") == "/metrics", "job %s: metrics_path" % sc["job_name"])
        for st in sc.get("static_configs", []):
            for t in st["targets"]:
                host, _, port = t.rpartition(":")
                need(host not in got, "target %s scraped twice" % host)
                need((st.get("labels") or {}).get("service") == host,
                     "target %s: label service=%r, want the compose service name" %
                     (t, (st.get("labels") or {}).get("service")))
                got[host] = (int(port), sc["job_name"])
    need(got == want, "scrape targets %s != compose services serving /metrics %s" % (sorted(got.items()),
                                                                                    sorted(want.items())))
    print("prometheus.yml scrapes %d services: %s" % (len(got), ", ".join(sorted(got))), flush=True)

    # The alerts select by these job names.
    with open(ALERTS_YML) as f:
        alerts_text = f.read()
    jobs = {j for _, j in want.values()}
    for j in re.findall(r'job="([^"]+)"', alerts_text):
        need(j in jobs, "alerts.yml selects job=%r, which prometheus.yml does not define" % j)
    need(prom.get("rule_files") == ["alerts.yml"], "prometheus.yml must load alerts.yml")

    # Compose runs Prometheus on these files and Grafana on the provisioning.
    def mounts(svc):
        out = {}
        for v in services[svc].get("volumes", []):
            parts = v.split(":")
            if parts[0].startswith("."):
                need(parts[-1] == "ro", "service %s: %s is not mounted read-only" % (svc, v))
                src = os.path.normpath(os.path.join(os.path.dirname(COMPOSE), parts[0]))
                need(os.path.exists(src), "service %s mounts %s, which does not exist" % (svc, src))
                out[parts[1]] = src
        return out
    need("prometheus" in services and "grafana" in services, "compose has no prometheus/grafana service")
    pm = mounts("prometheus")
    need(pm.get("/etc/prometheus/prometheus.yml") == PROM_YML, "prometheus: config not mounted")
    need(pm.get("/etc/prometheus/alerts.yml") == ALERTS_YML, "prometheus: alerts not mounted")
    gm = mounts("grafana")
    need(gm.get("/etc/grafana/provisioning") == os.path.dirname(os.path.dirname(DATASOURCES)),
         "grafana: provisioning not mounted")
    with open(PROVIDERS) as f:
        prov = yaml.safe_load(f)
    dash_dir = prov["providers"][0]["options"]["path"]
    need(gm.get(dash_dir) == os.path.dirname(DASHBOARD), "grafana: %s is not the dashboards mount" % dash_dir)

    # The dashboard's datasource is the provisioned one, which is Prometheus.
    with open(DATASOURCES) as f:
        ds = yaml.safe_load(f)["datasources"]
    need(len(ds) == 1 and ds[0]["url"] == "http://prometheus:9090", "datasource url is not the prometheus service")
    uid = ds[0]["uid"]
    ids = set()

    def walk(panels):
        for p in panels:
            need(p["id"] not in ids, "panel id %s used twice" % p["id"])
            ids.add(p["id"])
            if p.get("type") != "row":
                need(p.get("targets"), "panel %r has no query" % p.get("title"))
                for t in [p] + p["targets"]:
                    need((t.get("datasource") or {}).get("uid") == uid,
                         "panel %r: datasource is not %s" % (p.get("title"), uid))
            walk(p.get("panels", []))
    walk(dash["panels"])
    print("grafana: datasource %s, %d panels, mounts read-only" % (uid, len(ids)), flush=True)


def main():
    if not shutil.which("promtool"):
        raise Failure("promtool not found: install the Debian package `prometheus` (./chorus deps)")
    try:
        import yaml
    except ImportError:
        raise Failure("python3-yaml not installed (./chorus deps installs docker-compose, which brings it)")

    rc, _ = promtool("check", "config", PROM_YML)
    need(rc == 0, "promtool check config rejects %s" % PROM_YML)
    rc, _ = promtool("check", "rules", ALERTS_YML)
    need(rc == 0, "promtool check rules rejects %s" % ALERTS_YML)
    rc, _ = promtool("test", "rules", ALERTS_TEST)
    need(rc == 0, "promtool test rules: the alerts do not behave as %s expects" % ALERTS_TEST)

    tmp = tempfile.mkdtemp(prefix="chorus-monitoring-")
    try:
        dash = check_promql(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    check_wiring(yaml, dash)
    print("monitoring files OK")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print("FAIL: %s" % e, file=sys.stderr)
        sys.exit(1)
