#!/usr/bin/env python3
"""cdp_frames.py - the WebSocket framing of tests/e2e/cdp.py against frames
written by hand on a socketpair: the paths Chromium seldom takes in the
browser test (continuation frames, a ping between fragments, 16- and 64-bit
lengths, an empty message, a close frame) and the client's masked frames of
each length form, unmasked here and compared. Exit 0 on success, 1 on any
failure.
"""
import os
import socket
import struct
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import cdp  # noqa: E402


UTF8_126 = "\u00e9t\u00e9" * 25 + "!"   # 126 bytes of UTF-8


def fail(msg):
    raise AssertionError(msg)


def server_frame(fin, opcode, data):
    """A frame as a server sends it (unmasked), the shortest length form."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(data)
    if n < 126:
        return struct.pack("!BB", b0, n) + data
    if n < 1 << 16:
        return struct.pack("!BBH", b0, 126, n) + data
    return struct.pack("!BBQ", b0, 127, n) + data


def read_client_frame(sock):
    """One frame from the client: checks the mask bit, returns (b0, length form, data)."""
    def take(n):
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                fail("client side closed mid-frame")
            out += chunk
        return out
    b0, b1 = take(2)
    if not b1 & 0x80:
        fail("client frame not masked")
    n, form = b1 & 0x7F, b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", take(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", take(8))[0]
    mask = take(4)
    return b0, form, bytes(c ^ mask[i % 4] for i, c in enumerate(take(n)))


def client_on(sock):
    ws = object.__new__(cdp.WebSocket)   # the framing only: no handshake
    ws.sock, ws.buf = sock, b""
    return ws


def main():
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    ws = client_on(a)
    big = os.urandom(35000).hex().encode()   # 70,000 bytes: the 64-bit length form
    wire = (server_frame(False, cdp.OP_TEXT, b"ab")
            + server_frame(True, cdp.OP_PING, b"hi")         # control frame between fragments
            + server_frame(False, cdp.OP_CONT, b"c" * 300)   # 16-bit length
            + server_frame(True, cdp.OP_CONT, big)
            + server_frame(True, cdp.OP_TEXT, b"")
            + server_frame(True, cdp.OP_TEXT, UTF8_126.encode())   # 126 bytes: 16-bit form
            + server_frame(True, cdp.OP_CLOSE, struct.pack("!H", 1000)))
    t = threading.Thread(target=b.sendall, args=(wire,))
    t.start()
    got = ws.recv_text()
    if got != "ab" + "c" * 300 + big.decode():
        fail("fragmented message: %d chars, expected %d" % (len(got), 302 + len(big)))
    if ws.recv_text() != "":
        fail("empty message not read as empty")
    if ws.recv_text() != UTF8_126:
        fail("126-byte UTF-8 message misread")
    try:
        ws.recv_text()
        fail("a close frame was not reported")
    except cdp.CdpError as e:
        if "close" not in str(e):
            fail("close frame reported as %s" % e)
    t.join()
    b0, _, data = read_client_frame(b)
    if b0 != 0x80 | cdp.OP_PONG or data != b"hi":
        fail("the ping was not answered by a pong with its data (got %#x %r)" % (b0, data))

    for n, form in ((0, 0), (125, 125), (126, 126), (65535, 126), (65536, 127), (70001, 127)):
        text = ("x" * n)
        t = threading.Thread(target=ws.send_text, args=(text,))
        t.start()
        b0, got_form, data = read_client_frame(b)
        t.join()
        if b0 != 0x80 | cdp.OP_TEXT or got_form != form or data != text.encode():
            fail("client text frame of %d bytes: first byte %#x, length form %d (expected %d), data ok %s"
                 % (n, b0, got_form, form, data == text.encode()))

    # a continuation with nothing to continue is an error, not a message
    ws2 = client_on(a)
    b.sendall(server_frame(True, cdp.OP_CONT, b"stray"))
    try:
        ws2.recv_text()
        fail("a stray continuation frame was accepted")
    except cdp.CdpError:
        pass
    a.close()
    b.close()
    print("cdp framing ok")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print("FAIL: %s" % e, file=sys.stderr)
        sys.exit(1)
