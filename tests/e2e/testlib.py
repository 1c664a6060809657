"""testlib.py - what the Python end-to-end tests share: failing with a
message, free loopback ports, and polling a condition against a deadline
(never a bare sleep). Imported from this directory by compose_topology.py,
console_browser.py and test_up.py (prometheus_scrape.py through
compose_topology)."""
import random
import socket
import time


def fail(msg):
    raise AssertionError(msg)


def free_port():
    """A port the kernel just gave out on 127.0.0.1 (bind-probed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ports_free(ports):
    """True if every port in ports binds on 127.0.0.1 now."""
    socks = []
    try:
        for p in ports:
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def free_range(n, also=None):
    """The first of n consecutive ports free now (bind-probed); with also,
    base + also .. base + also + n - 1 must be free too (a Redis Cluster
    node's bus port is its port + 10000)."""
    for _ in range(200):
        base = random.randint(20000, 30000 - n)
        if ports_free(range(base, base + n)) and (also is None or ports_free(range(base + also, base + also + n))):
            return base
    fail("no %d consecutive free ports" % n)


def wait_until(what, cond, deadline_s=30):
    """Polls cond() every 50 ms until it is true; an OSError, ValueError or
    KeyError it raises counts as not yet (the last one is reported). Fails
    naming what after deadline_s."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            if cond():
                return
        except (OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(0.05)
    fail("timed out after %.0f s waiting for %s%s" % (deadline_s, what, " (last error: %s)" % last if last else ""))
