#!/usr/bin/env python3
"""The alternative the benchmark compares against the shared socket: one SO_REUSEPORT socket
per worker, all bound to the same port, so the kernel hashes each new connection to one of
them. Each worker still gets its socket as fd 3 with LISTEN_FDS=1, as under systemd.

usage: reuseport_launcher.py WORKERS PORT COREIIX_BINARY

Not what Coreiix ships: when a worker with its own socket stops, the connections queued on
that socket are reset, which a rolling restart must never do (see the README).
"""
import os
import signal
import socket
import subprocess
import sys


def main():
    workers, port, binary = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    children = []

    def stop(_sig, _frame):
        for child in children:
            child.send_signal(signal.SIGTERM)

    # Installed before any worker exists, so an early SIGTERM leaves no orphan.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(1, workers + 1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(4096)
        fd = sock.fileno()
        env = dict(os.environ, LISTEN_FDS="1", COREIIX_INSTANCE=str(slot), WORKERS=str(workers))
        env.pop("LISTEN_PID", None)
        children.append(subprocess.Popen(
            [binary], env=env, pass_fds=(fd,), preexec_fn=lambda fd=fd: os.dup2(fd, 3)))
        sock.close()
    sys.exit(max(child.wait() for child in children))


if __name__ == "__main__":
    main()
