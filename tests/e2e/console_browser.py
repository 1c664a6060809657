#!/usr/bin/env python3
"""console_browser.py - the web console (GET /ui/) in a real headless Chromium
against a live platform: a private redis-server, chorus-api and the six
workers as real processes.

Three sagas run to their end: one that succeeds, one that fails for want of
stock, one compensated (its total is over ORDER_LIMIT_CENTS, so the order
fails and the reservation is released). Each one's timeline page is rendered
by Chromium (--dump-dom after the page's own fetches) and the test asserts,
from the DOM: the rows and their causal order, their causal depth, the
compensation branch (class branch-compensation), status and reason, and the
six group cells (every one done once the groups are through). A real event
parked by hand in one group's dead-letter stream shows as `parked` in that
cell and on the dead-letter page. That page is then used as a person would,
in a Chromium driven over the DevTools protocol (cdp.py beside this file):
the admin token typed into its password field, the entry's Retry button
clicked with the mouse; the page reports the retry, the group takes the
event (its timeline cell turns done, seen in the same page), the entry
leaves the dead-letter stream and nothing new is parked. The overview lists
the six groups and the saga counts; a client's page lists its checkouts.
Every page must leave #js-errors empty, and the CDP session also fails on
any uncaught exception or console error it sees.

Screenshots of each page go to CHORUS_SCREENSHOT_DIR (set by meson to
<build>/console-screenshots). Chromium is required: without it the test
fails saying how to install it (./chorus deps), it does not skip.

Environment (tests/meson.build): CHORUS_API_BIN, CHORUS_WORKER_BIN,
CHORUS_SCREENSHOT_DIR. Exit 0 on success, 1 on any failure.
"""
import html.parser
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import cdp
from testlib import fail, free_port, wait_until  # noqa: E402

TOKEN = "console-test-token"
BUS = "ecommerce.checkout.events"
GROUPS = ["choreo-reservation", "choreo-order", "choreo-compensation",
          "choreo-notification", "choreo-audit", "choreo-cqrs"]
WORKERS = ["stock-reservation", "order-creation", "stock-compensation",
           "notification", "audit", "cqrs-projection"]
ORDER_LIMIT_CENTS = 100000
DEADLINE_S = 60   # generous: the machine may be shared and the build sanitized
CHROMIUM_CANDIDATES = ["chromium", "chromium-browser", "google-chrome"]


# ---- Redis over a plain socket (RESP), no client library needed -----------

class Redis:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.f = self.s.makefile("rb")

    def close(self):
        self.f.close()
        self.s.close()

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)
        return self._read()

    def _read(self):
        line = self.f.readline()
        if not line:
            raise OSError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError("redis: " + rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise OSError("bad RESP line %r" % line)


def fields(flat):
    return dict(zip(flat[0::2], flat[1::2]))


# ---- HTTP -------------------------------------------------------------------

def http(base, method, path, body=None, headers=None, timeout=15):
    data = json.dumps(body).encode() if body is not None else None
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(base + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, dict(r.headers), raw
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def http_json(base, method, path, body=None, headers=None, timeout=15):
    st, _, raw = http(base, method, path, body, headers, timeout)
    return st, json.loads(raw or b"{}")


# ---- the rendered DOM -------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def cls(self):
        return (self.attrs.get("class") or "").split()

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self):
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.walk()

    def find_all(self, pred):
        return [n for n in self.walk() if pred(n)]

    def by_id(self, id_):
        hits = self.find_all(lambda n: n.attrs.get("id") == id_)
        return hits[0] if hits else None

    def by_class(self, c):
        return self.find_all(lambda n: c in n.cls())


class DomBuilder(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


class Browser:
    def __init__(self, tmp, shots):
        self.bin = next((shutil.which(c) for c in CHROMIUM_CANDIDATES if shutil.which(c)), None)
        if not self.bin:
            fail("chromium is not installed: the console's browser test needs it "
                 "(./chorus deps installs it; or apt-get install --no-install-recommends chromium)")
        self.tmp, self.shots, self.n, self.pending = tmp, shots, 0, []

    def _start(self, extra, url, budget_ms):
        self.n += 1
        prof = os.path.join(self.tmp, "chromium-%d" % self.n)
        cmd = [self.bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               "--user-data-dir=" + prof, "--virtual-time-budget=%d" % budget_ms] + extra + [url]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return p, prof, url

    def _finish(self, run):
        p, prof, url = run
        try:
            out, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            fail("chromium did not finish %s within 90 s" % url)
        finally:
            shutil.rmtree(prof, ignore_errors=True)
        if p.returncode != 0:
            fail("chromium exited %d on %s: %s" % (p.returncode, url, err.decode(errors="replace")[-2000:]))
        return out.decode()

    def _run(self, extra, url, budget_ms):
        return self._finish(self._start(extra, url, budget_ms))

    def dom_start(self, url, budget_ms=4000):
        """Starts rendering url; dom_finish returns its DOM."""
        return self._start(["--dump-dom"], url, budget_ms)

    def dom(self, url, budget_ms=4000):
        return self.dom_finish(self.dom_start(url, budget_ms))

    def dom_finish(self, run):
        """The page's DOM once its scripts ran (and it said data-ready=1)."""
        url = run[2]
        b = DomBuilder()
        b.feed(self._finish(run))
        doc = b.root
        page = doc.by_id("page")
        if page is None:
            fail("%s: no #page in the DOM" % url)
        errs = doc.by_id("js-errors")
        if errs is None:
            fail("%s: no #js-errors element" % url)
        if errs.text().strip():
            fail("%s: JavaScript errors: %s" % (url, errs.text()))
        if page.attrs.get("data-ready") != "1":
            fail("%s: the page never got its data (data-ready=%s)" % (url, page.attrs.get("data-ready")))
        return doc

    def cdp(self):
        """A browser of its own, driven over the DevTools protocol."""
        return cdp.Chromium(self.bin, self.tmp)

    def screenshot(self, url, name, budget_ms=4000, size="1400,1000"):
        """Starts a screenshot of url; screenshots_done waits for them all
        (they overlap with the rest of the test)."""
        path = os.path.join(self.shots, name)
        if os.path.exists(path):
            os.unlink(path)
        run = self._start(["--screenshot=" + path, "--window-size=" + size, "--hide-scrollbars"], url, budget_ms)
        self.pending.append((run, path))

    def screenshots_done(self):
        for run, path in self.pending:
            self._finish(run)
            if not os.path.exists(path) or os.path.getsize(path) < 1000:
                fail("no screenshot written to " + path)
            print("screenshot %s" % path, flush=True)
        self.pending = []


# ---- the platform -----------------------------------------------------------

class Platform:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = {}
        self.redis = None

    def start(self):
        rport = free_port()
        self.redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--dir", self.tmp,
                                       "--save", "", "--appendonly", "no", "--daemonize", "no"],
                                      stdout=open(os.path.join(self.tmp, "redis.log"), "w"))
        url = "redis://127.0.0.1:%d" % rport

        def redis_up():
            r = Redis(rport)
            try:
                return r.cmd("PING") == "PONG"
            finally:
                r.close()
        wait_until("redis-server PING", redis_up, DEADLINE_S)
        self.r = Redis(rport)
        self.api_port = free_port()
        base_env = {k: v for k, v in os.environ.items()
                    if k not in ("REDIS_URL", "API_PORT", "METRICS_PORT", "ORDER_LIMIT_CENTS", "CHORUS_ADMIN_TOKEN")}
        api_env = dict(base_env, REDIS_URL=url, API_PORT=str(self.api_port), CHORUS_ADMIN_TOKEN=TOKEN,
                       API_THREADS="4", LOG_LEVEL="warn")
        self._spawn("api", [os.environ["CHORUS_API_BIN"]], api_env)
        for w in WORKERS:
            env = dict(base_env, REDIS_URL=url, METRICS_PORT="0", CLAIM_IDLE_MS="1000", BLOCK_MS="100",
                       LOG_LEVEL="warn", ORDER_LIMIT_CENTS=str(ORDER_LIMIT_CENTS))
            self._spawn(w, [os.environ["CHORUS_WORKER_BIN"], w], env)
        self.base = "http://127.0.0.1:%d" % self.api_port

        def ready():
            for n, p in self.procs.items():
                if p.poll() is not None:
                    fail("%s exited early with %d (log %s)" % (n, p.returncode, self._log(n)))
            return http(self.base, "GET", "/ready", timeout=2)[0] == 200
        wait_until("/ready (API up, six groups created)", ready, DEADLINE_S)

    def _log(self, name):
        return os.path.join(self.tmp, name + ".log")

    def _spawn(self, name, cmd, env):
        self.procs[name] = subprocess.Popen(cmd, env=env, stdout=open(self._log(name), "w"), stderr=subprocess.STDOUT)

    def stop(self):
        bad = []
        for n, p in self.procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)   # in case a test left it stopped
                p.send_signal(signal.SIGTERM)
        for n, p in self.procs.items():
            try:
                rc = p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                rc = "no exit within 20 s"
            if rc != 0:
                bad.append("%s: %s" % (n, rc))
            with open(self._log(n), errors="replace") as f:
                log = f.read()
            if "ERROR: AddressSanitizer" in log or "runtime error:" in log or "LeakSanitizer" in log:
                bad.append("%s: sanitizer report in %s" % (n, self._log(n)))
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(timeout=10)
        return bad

    def dump_logs(self):
        for n in self.procs:
            with open(self._log(n), errors="replace") as f:
                tail = f.read()[-3000:]
            if tail.strip():
                print("---- %s log (tail) ----\n%s" % (n, tail), file=sys.stderr)


# ---- the scenario -----------------------------------------------------------

def admin():
    return {"Authorization": "Bearer " + TOKEN}


def checkout(pf, client, pid, qty):
    st, body = http_json(pf.base, "POST", "/api/checkouts",
                         {"client_id": client, "items": [{"product_id": pid, "quantity": qty}]})
    if st != 202:
        fail("POST /api/checkouts %s x%d: %d %s" % (pid, qty, st, body))
    return body["checkout_id"]


def wait_terminal(pf, cid):
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        st, c = http_json(pf.base, "GET", "/api/checkouts/%s?wait_ms=5000" % cid, timeout=15)
        if st == 200 and c.get("status") in ("SUCCEEDED", "FAILED"):
            return c
    fail("checkout %s did not end within %d s" % (cid, DEADLINE_S))


def settled(pf, cid):
    """The timeline JSON once every group is through with every event."""
    out = {}

    def through():
        st, tl = http_json(pf.base, "GET", "/api/checkouts/%s/timeline" % cid)
        out["tl"] = tl
        return st == 200 and all(g["state"] in ("done", "parked") for e in tl["events"] for g in e["groups"])
    wait_until("every group done with checkout %s" % cid, through, DEADLINE_S)
    return out["tl"]


def rows_of(doc):
    tl = doc.by_id("timeline")
    if tl is None:
        fail("no #timeline")
    return tl.by_class("tl-row")


def assert_timeline(br, pf, cid, want, status, reason, shot=None):
    """want: [(type, depth, branch)] in causal order."""
    url = "%s/ui/#/checkout/%s" % (pf.base, cid)
    doc = br.dom(url)
    page = doc.by_id("page")
    if page.attrs.get("data-page") != "checkout":
        fail("%s: data-page is %s" % (url, page.attrs.get("data-page")))
    st = doc.by_id("checkout-status")
    if st is None or st.attrs.get("data-status") != status or st.text() != status:
        fail("%s: status shown %s, expected %s" % (cid, st and st.attrs, status))
    rs = doc.by_id("checkout-reason")
    if reason and (rs is None or reason not in rs.text()):
        fail("%s: reason %r not shown (got %r)" % (cid, reason, rs and rs.text()))
    rows = rows_of(doc)
    got = [(r.attrs.get("data-type"), int(r.attrs.get("data-depth")), r.attrs.get("data-branch")) for r in rows]
    if got != want:
        fail("%s: timeline rows\n  got      %s\n  expected %s" % (cid, got, want))
    for r in rows:
        comp = "branch-compensation" in r.cls()
        if comp != (r.attrs.get("data-branch") == "compensation"):
            fail("%s: row %s: class branch-compensation is %s but data-branch is %s"
                 % (cid, r.attrs.get("data-type"), comp, r.attrs.get("data-branch")))
        cells = r.by_class("tl-group")
        if [c.attrs.get("data-group") for c in cells] != GROUPS:
            fail("%s: row %s: group cells %s" % (cid, r.attrs.get("data-type"),
                                                 [c.attrs.get("data-group") for c in cells]))
        bars = r.by_class("tl-bar")
        if len(bars) != 1 or "left:" not in bars[0].attrs.get("style", ""):
            fail("%s: row %s has no positioned bar" % (cid, r.attrs.get("data-type")))
        text = r.text()
        if r.attrs.get("data-type") not in text:
            fail("%s: row %s does not show its type" % (cid, r.attrs.get("data-type")))
    if shot:
        br.screenshot(url, shot)
    return rows


def long_polls(pf):
    """The API's gauge of long-poll requests waiting right now."""
    _, _, raw = http(pf.base, "GET", "/metrics")
    for line in raw.decode().splitlines():
        if line.startswith("http_long_polls_waiting "):
            return float(line.split()[1])
    fail("no http_long_polls_waiting on the API's /metrics")


def states(rows):
    return {(r.attrs.get("data-type"), c.attrs.get("data-group")): c for r in rows for c in r.by_class("tl-group")}


def retry_by_page(br, pf, parked_id, ok_id, succeeded_type):
    """The dead-letter page in a browser driven over CDP: the admin token
    typed into its password field, the parked entry's Retry button clicked
    with the mouse. Waits for the page to report the retry and drop the row,
    then opens the event's checkout timeline in the same page (a hash
    change: the token stays in memory) and waits for the notification
    group's cell of the event to turn done. Any JavaScript exception or
    console error in the page fails the test."""
    row = 'tr.dl-row[data-id="%s"][data-group="choreo-notification"]' % parked_id
    t0 = time.monotonic()
    b = br.cdp()
    try:
        b.navigate("%s/ui/#/dead-letters" % pf.base)
        b.wait("the dead-letter page with the parked entry",
               "document.getElementById('page').dataset.page === 'dead-letters' && "
               "document.getElementById('page').dataset.ready === '1' && !!document.querySelector('%s')" % row)
        if b.eval("document.querySelectorAll('tr.dl-row').length") != 3:
            fail("the dead-letter page in the CDP session does not list 3 entries")
        # without the token the page refuses and says so (no request sent)
        b.click(row + " button.dl-retry")
        b.wait("the page asking for the token", "(function () { var m = document.getElementById('dl-message');"
               " return m.dataset.result === 'error' && m.textContent.indexOf('admin token') >= 0; })()")
        b.type_into("#admin-token", TOKEN)
        if b.eval("document.getElementById('admin-token').value") != TOKEN:
            fail("the admin token typed into #admin-token did not land in the field")
        kept = b.eval("[document.cookie, localStorage.length, sessionStorage.length, location.href]")
        if kept[:3] != ["", 0, 0] or TOKEN in kept[3]:
            fail("the admin token left the page's memory: cookie/localStorage/sessionStorage/href %s" % kept)
        b.click(row + " button.dl-retry")
        said = b.wait("the page to report the retry's outcome",
                      "(function () { var t = document.getElementById('dl-message').textContent;"
                      " return /^retr(ied|y failed)/.test(t) && t; })()")
        if not said.startswith("retried: ") or json.loads(said[len("retried: "):]).get("group") != "choreo-notification":
            fail("the page's retry message: %r" % said)
        b.wait("the page to drop the retried row", "document.getElementById('dl-message').dataset.result === 'ok'"
               " && !document.querySelector('%s') && document.querySelectorAll('tr.dl-row').length === 2" % row)
        # the event's group cell in the timeline, in the same page
        b.eval("location.hash = '#/checkout/%s'" % ok_id)
        cell = ('#timeline .tl-row[data-type="%s"] .tl-group[data-group="choreo-notification"]'
                % succeeded_type)
        b.wait("the retried event done in choreo-notification on the timeline",
               "document.getElementById('page').dataset.page === 'checkout' && "
               "(function () { var c = document.querySelector('%s');"
               " return !!c && c.dataset.state === 'done'; })()" % cell)
        if b.eval("document.getElementById('js-errors').textContent.trim()"):
            fail("JavaScript errors in #js-errors: %s" % b.eval("document.getElementById('js-errors').textContent"))
        b.eval("new Promise(function (r) { setTimeout(r, 100); })")   # let late console events arrive
        if b.errors:
            fail("JavaScript errors in the CDP session: %s" % b.errors)
    finally:
        b.close()
    print("retry through the page over CDP: %.1f s" % (time.monotonic() - t0), flush=True)


def main():
    for var in ("CHORUS_API_BIN", "CHORUS_WORKER_BIN"):
        if not os.environ.get(var):
            fail("%s is not set (run through meson test)" % var)
    if not shutil.which("redis-server"):
        fail("redis-server is not installed (./chorus deps)")
    shots = os.environ.get("CHORUS_SCREENSHOT_DIR") or os.path.join(os.getcwd(), "console-screenshots")
    os.makedirs(shots, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="chorus-console-")
    br = Browser(tmp, shots)   # fails at once without chromium
    pf = Platform(tmp)
    ok = False
    try:
        pf.start()
        base = pf.base
        for pid, name, price, avail in (("sku-mug", "Mug", 1200, 50), ("sku-rare", "Rare print", 5000, 1),
                                        ("sku-machine", "Espresso machine", 60000, 10)):
            st, body = http_json(base, "PUT", "/api/products/" + pid,
                                 {"name": name, "price_cents": price, "available": avail}, admin())
            if st != 200:
                fail("PUT /api/products/%s: %d %s" % (pid, st, body))

        # The console itself: served from the binary, with types and an ETag.
        st, h, raw = http(base, "GET", "/ui/")
        if st != 200 or not h.get("Content-Type", "").startswith("text/html") or b'id="js-errors"' not in raw:
            fail("GET /ui/: %d %s" % (st, h.get("Content-Type")))
        st, h, _ = http(base, "GET", "/ui/app.js")
        if st != 200 or not h.get("Content-Type", "").startswith("text/javascript") or not h.get("ETag"):
            fail("GET /ui/app.js: %d %s etag %s" % (st, h.get("Content-Type"), h.get("ETag")))
        st, _, _ = http(base, "GET", "/ui/app.js", headers={"If-None-Match": h["ETag"]})
        if st != 304:
            fail("GET /ui/app.js with its ETag: %d, expected 304" % st)
        st, _, _ = http(base, "GET", "/ui/nope.js")
        if st != 404:
            fail("GET /ui/nope.js: %d, expected 404" % st)

        ok_id = checkout(pf, "browser-client", "sku-mug", 2)
        stock_id = checkout(pf, "browser-client", "sku-rare", 3)
        comp_id = checkout(pf, "browser-client", "sku-machine", 2)   # 120000 > ORDER_LIMIT_CENTS
        for cid, status in ((ok_id, "SUCCEEDED"), (stock_id, "FAILED"), (comp_id, "FAILED")):
            c = wait_terminal(pf, cid)
            if c["status"] != status:
                fail("checkout %s ended %s, expected %s" % (cid, c, status))
        for cid in (ok_id, stock_id, comp_id):
            settled(pf, cid)

        # A real event parked by hand in one group (the fields es_dlq_park
        # writes): its timeline cell shows parked, with the reason.
        ok_tl = settled(pf, ok_id)
        succ = next(e for e in ok_tl["events"] if e["type"] == "CheckoutSucceeded")
        entry = pf.r.cmd("XRANGE", BUS, succ["id"], succ["id"])[0]
        f = fields(entry[1])
        dlq = "%s.dlq.choreo-notification" % BUS
        parked_id = pf.r.cmd("XADD", dlq, "*", "group", "choreo-notification", "reason", "webhook_unreachable",
                             "attempts", "5", "stream", BUS, "entry_id", entry[0], "type", f["type"],
                             "payload", f["payload"], "ts", f["ts"])
        # A foreign entry: the two groups that take every event (audit,
        # cqrs) cannot decode it and park it at once; the others skip its type.
        pf.r.cmd("XADD", BUS, "*", "type", "NotAChorusEvent", "payload", "<not json>", "ts", "1")
        wait_until("the foreign entry parked by choreo-audit and choreo-cqrs",
                   lambda: [pf.r.cmd("XLEN", "%s.dlq.%s" % (BUS, g)) for g in GROUPS] == [0, 0, 0, 1, 1, 1], DEADLINE_S)

        I, R, X, O, Y, L, S, F = ("CheckoutInitiated", "StockReserved", "StockReservationFailed", "OrderCreated",
                                  "OrderCreationFailed", "StockReleased", "CheckoutSucceeded", "CheckoutFailed")
        # Live: with order-creation stopped the saga waits at STOCK_RESERVED;
        # the page is opened then, its long-poll registers, the worker goes
        # on, and the rendered page ends SUCCEEDED with all four rows.
        oc = pf.procs["order-creation"]
        oc.send_signal(signal.SIGSTOP)
        live_id = checkout(pf, "live-client", "sku-mug", 1)
        wait_until("the live checkout at STOCK_RESERVED", lambda: http_json(
            base, "GET", "/api/checkouts/" + live_id)[1].get("status") == "STOCK_RESERVED", DEADLINE_S)
        waiting0 = long_polls(pf)
        run = br.dom_start("%s/ui/#/checkout/%s" % (base, live_id), budget_ms=8000)
        wait_until("the page's long-poll to wait in the API", lambda: long_polls(pf) > waiting0, DEADLINE_S)
        if http_json(base, "GET", "/api/checkouts/" + live_id)[1].get("status") != "STOCK_RESERVED":
            fail("the live checkout moved while order-creation was stopped")
        oc.send_signal(signal.SIGCONT)
        doc = br.dom_finish(run)
        st = doc.by_id("checkout-status")
        got = [r.attrs.get("data-type") for r in rows_of(doc)]
        if st is None or st.attrs.get("data-status") != "SUCCEEDED" or got != [I, R, O, S]:
            fail("live page did not follow the saga to its end: status %s, rows %s" % (st and st.attrs, got))

        rows = assert_timeline(br, pf, ok_id, [(I, 0, "main"), (R, 1, "main"), (O, 2, "main"), (S, 2, "main")],
                               "SUCCEEDED", None, "timeline-succeeded.png")
        cells = states(rows)
        c = cells[(S, "choreo-notification")]
        if c.attrs.get("data-state") != "parked" or "webhook_unreachable" not in c.attrs.get("title", ""):
            fail("the parked CheckoutSucceeded shows %s / %r" % (c.attrs.get("data-state"), c.attrs.get("title")))
        others = [k for k, c in cells.items() if k != (S, "choreo-notification") and c.attrs.get("data-state") != "done"]
        if others:
            fail("cells not done on a settled saga: %s" % others)

        rows = assert_timeline(br, pf, stock_id, [(I, 0, "main"), (X, 1, "compensation"), (F, 2, "compensation")],
                               "FAILED", "insufficient_stock", "timeline-stock-failed.png")
        if any(c.attrs.get("data-state") != "done" for c in states(rows).values()):
            fail("stock-failed saga: a group cell is not done")

        rows = assert_timeline(br, pf, comp_id,
                               [(I, 0, "main"), (R, 1, "main"), (Y, 2, "compensation"), (L, 3, "compensation"),
                                (F, 3, "compensation")], "FAILED", "order_limit_exceeded", "timeline-compensated.png")
        if any(c.attrs.get("data-state") != "done" for c in states(rows).values()):
            fail("compensated saga: a group cell is not done")
        # the README's picture (docs/img/timeline.png) is this one, cropped
        br.screenshot("%s/ui/#/checkout/%s" % (base, comp_id), "timeline-compensated-readme.png", size="1400,430")
        # the hop column shows a latency for every effect, none for the root
        hops = [r.by_class("tl-hop")[0].text() for r in rows]
        if hops[0] != "" or not all(h.startswith("+") for h in hops[1:]):
            fail("hop latencies shown: %s" % hops)

        # The client's page lists the three, newest first, linked.
        doc = br.dom("%s/ui/#/client/browser-client" % base)
        listed = [r.attrs.get("data-checkout-id") for r in doc.find_all(lambda n: "client-checkout" in n.cls())]
        if listed != [comp_id, stock_id, ok_id]:
            fail("client page lists %s, expected %s" % (listed, [comp_id, stock_id, ok_id]))
        br.screenshot("%s/ui/#/client/browser-client" % base, "client.png")

        # Overview: six groups with their figures; the saga counts.
        doc = br.dom("%s/ui/#/" % base)
        grows = {r.attrs.get("data-group"): r for r in doc.by_class("group-row")}
        if sorted(grows) != sorted(GROUPS):
            fail("overview groups: %s" % sorted(grows))
        for g, r in grows.items():
            if r.by_class("consumers")[0].text() != "1":
                fail("overview: %s consumers %s" % (g, r.by_class("consumers")[0].text()))
        dls = [grows[g].by_class("dead-letters")[0].text() for g in GROUPS]
        if dls != ["0", "0", "0", "1", "1", "1"]:
            fail("overview: dead letters per group %s" % dls)
        stat = {n.attrs.get("data-stat"): n.by_class("v")[0].text() for n in doc.find_all(lambda n: "data-stat" in n.attrs)}
        if stat.get("succeeded") != "2" or stat.get("failed") != "2":   # with the live one
            fail("overview saga counts: %s" % stat)
        br.screenshot("%s/ui/#/" % base, "overview.png")

        # Dead letters: three rows (the foreign entry twice, the parked success).
        doc = br.dom("%s/ui/#/dead-letters" % base)
        dl = doc.by_class("dl-row")
        parked = (parked_id, "choreo-notification")   # ids are per stream: the pair names one
        if len(dl) != 3 or parked not in [(r.attrs.get("data-id"), r.attrs.get("data-group")) for r in dl]:
            fail("dead-letter page rows: %s" % [(r.attrs.get("data-id"), r.attrs.get("data-group")) for r in dl])
        if doc.by_id("admin-token") is None or doc.by_id("admin-token").attrs.get("type") != "password":
            fail("no password field for the admin token")
        if not any(r.by_class("dl-retry") for r in dl):
            fail("no retry buttons")
        br.screenshot("%s/ui/#/dead-letters" % base, "dead-letters.png")

        # Retry the parked one through the page itself, over CDP: type the
        # token into the password field, click the row's Retry button with
        # the mouse, wait for the page to say it worked. The group takes it
        # (notification already sent: acknowledged), nothing new is parked.
        before = {g: pf.r.cmd("XLEN", "%s.dlq.%s" % (BUS, g)) for g in GROUPS}
        retry_by_page(br, pf, parked_id, ok_id, S)
        retry_stream = "%s.retry.choreo-notification" % BUS

        def consumed():
            info = [fields(g) for g in pf.r.cmd("XINFO", "GROUPS", retry_stream)]
            return info and all(g["pending"] == 0 and g["lag"] == 0 for g in info)
        wait_until("the retried entry taken and acknowledged by choreo-notification", consumed, DEADLINE_S)
        after = {g: pf.r.cmd("XLEN", "%s.dlq.%s" % (BUS, g)) for g in GROUPS}
        want = dict(before, **{"choreo-notification": before["choreo-notification"] - 1})
        if after != want:
            fail("dead letters after the retry: %s, expected %s" % (after, want))
        st, body = http_json(base, "GET", "/api/dead-letters")
        listed = [(d["id"], d["group"]) for d in body.get("dead_letters", [])]
        if st != 200 or len(listed) != 2 or parked in listed:
            fail("GET /api/dead-letters after the retry: %d %s" % (st, listed))
        doc = br.dom("%s/ui/#/dead-letters" % base)
        ids = [(r.attrs.get("data-id"), r.attrs.get("data-group")) for r in doc.by_class("dl-row")]
        if len(ids) != 2 or parked in ids:
            fail("dead-letter page after the retry: %s" % ids)
        rows = rows_of(br.dom("%s/ui/#/checkout/%s" % (base, ok_id)))
        if states(rows)[(S, "choreo-notification")].attrs.get("data-state") != "done":
            fail("the retried CheckoutSucceeded is not done in choreo-notification")
        br.screenshots_done()
        ok = True
        return 0
    finally:
        if not ok:
            pf.dump_logs()
        bad = pf.stop()
        if bad and ok:
            fail("processes did not stop cleanly: %s" % bad)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (AssertionError, cdp.CdpError) as e:
        print("FAIL: %s" % e, file=sys.stderr)
        sys.exit(1)
