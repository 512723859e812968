"""What every part of the benchmark suite uses: its log line and a free
loopback port (bench/run.py, bench/gateway.py, bench/shared.py)."""
import socket
import sys


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on now (the kernel's pick)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p
