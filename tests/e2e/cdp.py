"""cdp.py - a small Chrome DevTools Protocol client for the browser tests,
Python's standard library only.

  Chromium(bin, tmp)   starts headless chromium with a remote-debugging port
                       and connects to its page over a WebSocket
  .call(method, **p)   one CDP command; returns its result, raises CdpError
  .eval(js)            Runtime.evaluate by value (promises awaited)
  .wait(what, js)      polls a JS condition against a deadline
  .errors              console errors and uncaught exceptions seen so far
  .close()             closes the browser and removes its profile

The WebSocket (RFC 6455) is the client side only: the opening handshake with
a random key checked against Sec-WebSocket-Accept, masked text frames out,
text/continuation/ping/close frames in, any length (7-bit, 16-bit and 64-bit).
"""
import base64
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class CdpError(Exception):
    pass


class WebSocket:
    """A client WebSocket over a plain TCP socket."""

    def __init__(self, url, timeout=30):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "ws" or not u.hostname or not u.port:
            raise CdpError("not a ws://host:port URL: %r" % url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        self.buf = b""
        key = base64.b64encode(os.urandom(16))
        path = (u.path or "/") + ("?" + u.query if u.query else "")
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          % (path.encode(), u.hostname.encode(), u.port, key))
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if len(lines[0].split()) < 2 or lines[0].split()[1] != "101":
            raise CdpError("WebSocket handshake refused: %s" % lines[0])
        hdrs = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        if hdrs.get("sec-websocket-accept") != want:
            raise CdpError("WebSocket handshake: Sec-WebSocket-Accept %r, expected %r"
                           % (hdrs.get("sec-websocket-accept"), want))

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise CdpError("the browser closed the WebSocket")
        self.buf += chunk

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode, data):
        """One final frame, masked as a client must."""
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        # XOR with the mask repeated over the payload, as one big integer
        reps = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(data, "big") ^ int.from_bytes(reps, "big")).to_bytes(n, "big") if n else b""
        self.sock.sendall(head + mask + masked)

    def send_text(self, text):
        self._send_frame(OP_TEXT, text.encode())

    def _read_frame(self):
        b0, b1 = self._take(2)
        fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._take(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._take(8))[0]
        if b1 & 0x80:   # a server must not mask; unmask anyway if it did
            mask = self._take(4)
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(self._take(n)))
        else:
            data = self._take(n)
        return bool(fin), opcode, data

    def recv_text(self):
        """The next whole text message (fragments joined); answers pings."""
        parts, first = [], None
        while True:
            fin, opcode, data = self._read_frame()
            if opcode == OP_PING:
                self._send_frame(OP_PONG, data)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                raise CdpError("the browser closed the WebSocket (close frame %r)" % data[:2])
            if opcode in (OP_TEXT, OP_BIN):
                if first is not None:
                    raise CdpError("a new message began inside a fragmented one")
                first = opcode
            elif opcode == OP_CONT:
                if first is None:
                    raise CdpError("a continuation frame with no message to continue")
            else:
                raise CdpError("unknown WebSocket opcode %d" % opcode)
            parts.append(data)
            if fin:
                if first != OP_TEXT:
                    raise CdpError("a binary message where CDP sends text")
                return b"".join(parts).decode()

    def close(self):
        try:
            self._send_frame(OP_CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    """Headless chromium driven over CDP through its one page."""

    def __init__(self, bin_, tmp, deadline_s=30):
        self.prof = os.path.join(tmp, "chromium-cdp")
        self.port = _free_port()
        self.log = open(os.path.join(tmp, "chromium-cdp.log"), "w")
        self.proc = subprocess.Popen(
            [bin_, "--headless", "--remote-debugging-port=%d" % self.port, "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-dev-shm-usage", "--user-data-dir=" + self.prof, "--window-size=1400,1000", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.ws, self.next_id, self.events, self.errors = None, 0, [], []
        try:
            self.ws = WebSocket(self._page_ws_url(deadline_s), timeout=deadline_s)
            for domain in ("Runtime", "Log", "Page", "DOM"):
                self.call(domain + ".enable")
        except BaseException:
            self.close()
            raise

    def _page_ws_url(self, deadline_s):
        """The page target's webSocketDebuggerUrl, once the browser answers."""
        end, last = time.monotonic() + deadline_s, None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise CdpError("chromium exited %d before its DevTools port answered" % self.proc.returncode)
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % self.port, timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except (OSError, ValueError) as e:
                last = e
            time.sleep(0.05)
        raise CdpError("chromium's DevTools port %d gave no page within %d s (last: %s)" % (self.port, deadline_s, last))

    def _event(self, msg):
        """Keeps every event; records the ones that mean a JavaScript error."""
        self.events.append(msg)
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append("exception: %s %s" % (d.get("text", ""), d.get("exception", {}).get("description", "")))
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console.%s: %s" % (p["type"], " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", []))))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.errors.append("log (%s): %s %s" % (e.get("source"), e.get("text"), e.get("url", "")))

    def call(self, method, **params):
        self.next_id += 1
        my = self.next_id
        self.ws.send_text(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv_text())
            if msg.get("id") == my:
                if "error" in msg:
                    raise CdpError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            if "method" in msg:
                self._event(msg)

    def eval(self, js):
        """The value of a JS expression in the page (a promise is awaited)."""
        r = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise CdpError("evaluating %r threw: %s" % (js, r["exceptionDetails"].get("exception", {})
                                                         .get("description", r["exceptionDetails"].get("text"))))
        return r["result"].get("value")

    def wait(self, what, js, deadline_s=30):
        """Polls a JS condition until it is truthy; fails at once on a JS error."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            v = self.eval(js)
            if self.errors:
                raise CdpError("JavaScript errors while waiting for %s: %s" % (what, self.errors))
            if v:
                return v
            time.sleep(0.05)
        raise CdpError("timed out after %d s waiting in the page for %s" % (deadline_s, what))

    def navigate(self, url, deadline_s=30):
        """Loads url and returns once its load event fired."""
        seen = len(self.events)
        r = self.call("Page.navigate", url=url)
        if r.get("errorText"):
            raise CdpError("navigating to %s: %s" % (url, r["errorText"]))
        end = time.monotonic() + deadline_s
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events[seen:]):
            if time.monotonic() > end:
                raise CdpError("%s did not load within %d s" % (url, deadline_s))
            msg = json.loads(self.ws.recv_text())
            if "method" in msg:
                self._event(msg)

    def node(self, selector):
        """The DOM node id of the first match of a CSS selector (fails on none)."""
        root = self.call("DOM.getDocument", depth=0)["root"]["nodeId"]
        n = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not n:
            raise CdpError("no element matches %s" % selector)
        return n

    def type_into(self, selector, text):
        """Focuses the element and types text as keyboard input would."""
        self.call("DOM.focus", nodeId=self.node(selector))
        self.call("Input.insertText", text=text)

    def click(self, selector):
        """A left click with the mouse at the middle of the element's box."""
        n = self.node(selector)
        self.call("DOM.scrollIntoViewIfNeeded", nodeId=n)
        q = self.call("DOM.getBoxModel", nodeId=n)["model"]["content"]
        x, y = sum(q[0::2]) / 4, sum(q[1::2]) / 4
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self):
        if self.ws is not None:
            try:
                self.ws.send_text(json.dumps({"id": 0, "method": "Browser.close"}))
            except OSError:
                pass
            self.ws.close()
            self.ws = None
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.prof, ignore_errors=True)
