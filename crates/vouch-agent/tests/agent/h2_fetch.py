"""One FetchX509SVID call over raw HTTP/2 (standard library only, so it starts in milliseconds and runs
from any copy of the python binary): the caller of workload_api.rs's executable-hash test.

Usage: h2_fetch.py SOCKET [--wait]. With --wait it connects, prints "ready", and sends its request only
once a line arrives on stdin (so that many callers can ask at the same moment), then prints "sent".
Last it prints the outcome and the seconds from connecting to the answer: "svid S" (a message came),
"refused S" (the call ended without one: a gRPC error), or "closed S".
"""
import signal
import socket
import struct
import sys
import time

signal.alarm(30)  # never outlive a test that died


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    # HPACK literal without indexing, new name, no Huffman coding; every string here is < 127 bytes.
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


HEADERS = b"".join(
    literal(n, v)
    for n, v in [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"workload.spiffe.io", b"true"),
    ]
)


def read_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            return None
        out += chunk
    return out


def main():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(25)
    s.connect(sys.argv[1])
    if "--wait" in sys.argv:
        print("ready", flush=True)
        sys.stdin.readline()
        print("sent", flush=True)
    started = time.monotonic()
    s.sendall(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + frame(4, 0, 0)
        + frame(1, 0x4, 1, HEADERS)
        + frame(0, 0x1, 1, b"\x00\x00\x00\x00\x00")  # an empty X509SVIDRequest, end of stream
    )
    outcome = "closed"
    while True:
        head = read_exact(s, 9)
        if head is None:
            break
        length = int.from_bytes(head[:3], "big")
        kind, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = read_exact(s, length)
        if payload is None:
            break
        if kind == 4 and not flags & 0x1:
            s.sendall(frame(4, 0x1, 0))  # acknowledge the server's SETTINGS
        elif kind == 0 and stream == 1 and length > 0:
            outcome = "svid"
            break
        elif kind == 1 and stream == 1 and flags & 0x1:
            outcome = "refused"
            break
        elif kind == 7:
            break
    print(outcome, round(time.monotonic() - started, 3), flush=True)


main()
