"""redis_lab.py - what the measuring tools in tools/ share: a minimal RESP
client over a socket and a private redis-server on a free loopback port.

    from redis_lab import Conn, PrivateRedis
    srv = PrivateRedis(["--appendonly", "no"])   # extra redis-server arguments
    r = srv.conn()
    r.cmd("SET", "k", "v"); r.pipe([["GET", "k"], ["DEL", "k"]])
    srv.stop()

Replies: bytes for strings, status and integers (as sent), lists for arrays,
None for nil; an error reply raises RuntimeError."""
import shutil, socket, subprocess, tempfile, time


def enc(*args):
    """One command in RESP (each argument bytes, or anything str() takes)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """A connection to 127.0.0.1:port (waits up to 10 s for it to listen)."""

    def __init__(self, port, host="127.0.0.1"):
        deadline = time.time() + 10
        while True:
            try:
                self.s = socket.create_connection((host, port))
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.f = self.s.makefile("rb")

    def read(self):
        line = self.f.readline()
        t, rest = line[:1], line[1:-2]
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t in (b"+", b":"):
            return rest
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError("bad reply %r" % line)

    def cmd(self, *args):
        self.s.sendall(enc(*args))
        return self.read()

    def pipe(self, cmds, chunk=200):
        """Sends cmds (lists of arguments) pipelined, chunk at a time; returns
        the last reply."""
        last = None
        for i in range(0, len(cmds), chunk):
            self.s.sendall(b"".join(enc(*c) for c in cmds[i:i + chunk]))
            for _ in cmds[i:i + chunk]:
                last = self.read()
        return last

    def info(self, section):
        """INFO section as a dict of strings."""
        text = self.cmd("INFO", section).decode()
        return dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)

    def close(self):
        self.f.close()
        self.s.close()


class PrivateRedis:
    """redis-server on a free loopback port in a temp dir (no RDB snapshots),
    with extra arguments; stop() ends it and removes the dir."""

    def __init__(self, extra=()):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.dir = tempfile.mkdtemp(prefix="redis_lab.")
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--dir", self.dir] + list(extra), stdout=subprocess.DEVNULL)

    def conn(self):
        return Conn(self.port)

    def cpu_ns(self):
        """CPU time of the server's main thread, in ns (schedstat)."""
        p = self.proc.pid
        return int(open("/proc/%d/task/%d/schedstat" % (p, p)).read().split()[0])

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
