"""kvm-qemu readiness probe, run by python3 on the management node (``python3 -c``, see
deploys/_readiness.py): argv[1] is the JSON configuration (see ``probe_config`` there).

It enters the network namespace of the management node's dnsmasq, then waits, until the deadline, for
every VM's lease (manifest MAC with manifest IP in the lease file) and SSH banner, and prints one JSON
object: seconds to each lease and SSH answer, the time taken, and a note about the namespace.
"""

import ctypes
import json
import os
import socket
import sys
import time

cfg = json.loads(sys.argv[1])
start = time.monotonic()
deadline = start + cfg["timeout"]
note = ""
try:
    with open(cfg["pid_file"]) as f:
        ns = "/proc/%d/ns/net" % int(f.read().split()[0])
    if os.readlink(ns) != os.readlink("/proc/self/ns/net"):
        fd = os.open(ns, os.O_RDONLY)
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
            note = "cannot enter the network namespace of dnsmasq: errno %d" % ctypes.get_errno()
        os.close(fd)
except (OSError, ValueError, IndexError) as exc:
    note = "dnsmasq pid file %s: %s" % (cfg["pid_file"], exc)


def answers(address, port, limit):
    try:
        with socket.create_connection((address, port), timeout=limit) as sock:
            sock.settimeout(limit)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


lease, ssh = {}, {}
while True:
    try:
        with open(cfg["leasefile"]) as f:
            held = {(w[1].lower(), w[2]) for w in (line.split() for line in f) if len(w) >= 3}
    except OSError:
        held = set()
    for vm in cfg["vms"]:
        name = vm["name"]
        if name not in lease and (vm["mac"], vm["ip"]) in held:
            lease[name] = round(time.monotonic() - start, 1)
        if name in lease and name not in ssh:
            left = deadline - time.monotonic()
            if left > 0 and answers(vm["ssh"], cfg["port"], min(1.0, left)):
                ssh[name] = round(time.monotonic() - start, 1)
    if len(ssh) == len(cfg["vms"]) or time.monotonic() >= deadline:
        break
    time.sleep(0.25)
print(json.dumps({"lease": lease, "ssh": ssh, "elapsed": round(time.monotonic() - start, 1), "note": note}))
