"""Relay DNS queries from a loopback address of the root namespace to a server inside a namespace.

    python3 dnsrelay.py LISTEN_ADDR NETNS_PATH UPSTREAM_ADDR PID_FILE

The management node's dnsmasq listens only on the cluster bridge, inside the cluster network
namespace. This relay lets the machine itself (operators, tests) query it at the management node's
loopback address without giving the root namespace any cluster address: the listening socket is
made in the root namespace, then the process moves into the cluster namespace, where every
upstream socket is made. Standalone on purpose (no imports from the package): it runs as a daemon.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import sys
import time

CLONE_NEWNET = 0x40000000
PORT = 53
QUERY_TIMEOUT = 5.0


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def serve(listen: str, netns: str, upstream: str, pid_file: str) -> None:
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind((listen, PORT))
    _setns(netns)
    # query socket -> (client address, deadline)
    pending: dict[socket.socket, tuple[tuple[str, int], float]] = {}
    with open(pid_file, "w") as f:
        f.write(f"{os.getpid()}\n")
    while True:
        readable, _, _ = select.select([front, *pending], [], [], 1.0)
        for sock in readable:
            if sock is front:
                data, client = front.recvfrom(4096)
                query = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # made in the cluster namespace
                try:
                    query.sendto(data, (upstream, PORT))
                except OSError:
                    query.close()
                    continue
                pending[query] = (client, time.monotonic() + QUERY_TIMEOUT)
            else:
                client, _ = pending.pop(sock)
                try:
                    front.sendto(sock.recv(4096), client)
                except OSError:
                    pass
                sock.close()
        now = time.monotonic()
        for sock, (_, deadline) in list(pending.items()):
            if deadline < now:
                del pending[sock]
                sock.close()


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    serve(*sys.argv[1:])
