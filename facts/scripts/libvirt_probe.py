"""The host side of the libvirt facts: one Python process, one libvirt connection, everything as JSON.

``facts/libvirt.py`` sends this file's text to the hypervisor's own python3, with the arguments URI
and TIMEOUT. It lists pools (active ones refreshed first, so disk files created outside libvirt
appear), their volumes, the domains (live XML, plus the
persistent XML of running domains, both with the secure flag so console passwords survive a clone),
their snapshots (XML of each, and which is current), the node's size, and the files the delete and
build decisions need: every entry of every directory pool (active or not) and every domain disk with
its qcow2 backing chain, read from the image headers, and the SHA-256 of each cloud-init seed
(``*-seed.iso``) in them. Each entry's type, owner and mode come from ``lstat``; only a regular file
is opened (``O_NOFOLLOW | O_NONBLOCK``, and ``fstat`` must show the same regular file), so a link,
FIFO or device planted in a shared pool directory is never followed or opened.
Raw libvirt XML is printed as is; the controller parses it (``facts/util/libvirt_parse.py``), so this
script stays small and needs only the libvirt bindings.

A watchdog thread bounds the whole probe: after TIMEOUT seconds it prints which step was running
(connect, refresh of pool X, ...) and exits 124, even when libvirt blocks in a call (the bindings
release the GIL around them). It must run on the hosts' own Python 3 (3.6 on RHEL 8), so it uses
nothing newer.
"""
import json
import os
import stat
import struct
import sys
import threading
import time

uri = sys.argv[1]
limit = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
step = ["start"]

def watchdog():
    time.sleep(limit)
    sys.stderr.write("kvm-qemu: timed out after %d s: libvirt probe, %s\n" % (limit, step[0]))
    sys.stderr.flush()
    os._exit(124)

guard = threading.Thread(target=watchdog)
guard.daemon = True
guard.start()
try:
    import libvirt
except ImportError:
    sys.stderr.write("kvm-qemu: the libvirt Python bindings are missing on this host "
                     "(install python3-libvirt, e.g. with deploys/kvm_host.py)\n")
    sys.exit(3)
libvirt.registerErrorHandler(lambda ctx, err: None, None)
SECURE = getattr(libvirt, "VIR_DOMAIN_XML_SECURE", 1)
INACTIVE = getattr(libvirt, "VIR_DOMAIN_XML_INACTIVE", 2)
step[0] = "connect to " + uri
try:
    conn = libvirt.open(uri)
except libvirt.libvirtError as exc:
    sys.stderr.write("kvm-qemu: cannot connect to libvirt at %s: %s\n" % (uri, exc))
    sys.exit(2)

def safe(call, default=None):
    try:
        return call()
    except libvirt.libvirtError:
        return default

files = {}  # type: dict

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

def open_regular(path, seen):
    # Pool directories may hold entries planted by others: only the regular file lstat saw is opened,
    # never a link (O_NOFOLLOW), and never blocking on a FIFO or device (O_NONBLOCK, then fstat).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(fd)
        return None
    return fd

def qcow2_backing(path, seen):
    fd = open_regular(path, seen)
    if fd is None:
        return None
    try:
        head = os.read(fd, 20)
        if len(head) < 20 or head[:4] != b"QFI\xfb":
            return None
        offset, size = struct.unpack(">QI", head[8:20])
        if not offset or not 0 < size < 4096:
            return None
        os.lseek(fd, offset, os.SEEK_SET)
        name = os.read(fd, size).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    if name.startswith("/") or ":" in name.split("/")[0]:
        return name
    return os.path.normpath(os.path.join(os.path.dirname(path), name))

def seed_digest(path, seen):
    # A cloud-init seed is small: its SHA-256 tells whether it must be rebuilt.
    import hashlib
    fd = open_regular(path, seen)
    if fd is None:
        return None
    try:
        if os.fstat(fd).st_size > 16 << 20:
            return None
        digest = hashlib.sha256()
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)

def describe(path, depth=0):
    if path in files or depth > 16:
        return
    try:
        seen = os.lstat(path)
    except OSError:
        files[path] = {"kind": "missing", "backing": None}
        return
    mode = seen.st_mode
    kind = ("link" if stat.S_ISLNK(mode) else "file" if stat.S_ISREG(mode)
            else "dir" if stat.S_ISDIR(mode) else "other")
    step[0] = "read " + path
    # Headers are read only of regular files: a link is reported as a link, its target left alone.
    backing = qcow2_backing(path, seen) if kind == "file" else None
    files[path] = {"kind": kind, "backing": backing, "uid": seen.st_uid, "gid": seen.st_gid,
                   "mode": stat.S_IMODE(mode)}
    if kind == "file" and path.endswith("-seed.iso"):
        files[path]["sha256"] = seed_digest(path, seen)
    if backing and backing.startswith("/"):
        describe(backing, depth + 1)

pools = []
for pool in conn.listAllStoragePools(0):
    name = pool.name()
    active = bool(safe(pool.isActive, 0))
    volumes = []
    if active:
        step[0] = "refresh of pool " + name
        safe(lambda: pool.refresh(0))
        step[0] = "volumes of pool " + name
        for volume in safe(lambda: pool.listAllVolumes(0), []):
            xml = safe(lambda: volume.XMLDesc(0))
            if xml:
                volumes.append(xml)
    step[0] = "pool " + name
    pools.append({"name": name, "active": active, "autostart": bool(safe(pool.autostart, 0)),
                  "persistent": bool(safe(pool.isPersistent, 0)), "xml": safe(lambda: pool.XMLDesc(0), ""),
                  "volumes": volumes})

domains = []
for dom in conn.listAllDomains(0):
    step[0] = "domain " + dom.name()
    state = safe(dom.state, [0])[0]
    persistent = bool(safe(dom.isPersistent, 0))
    active = bool(safe(dom.isActive, 0))
    live = safe(lambda: dom.XMLDesc(SECURE))
    if live is None:
        continue  # undefined while we looked
    inactive = safe(lambda: dom.XMLDesc(INACTIVE | SECURE)) if persistent and active else None
    snapshots = []
    for snap in safe(lambda: dom.listAllSnapshots(0), []):
        text = safe(lambda: snap.getXMLDesc(0))
        if text:
            snapshots.append({"xml": text, "current": bool(safe(snap.isCurrent, 0))})
    domains.append({"name": dom.name(), "uuid": dom.UUIDString(), "state": state, "persistent": persistent,
                    "autostart": bool(safe(dom.autostart, 0)), "xml": live, "inactive_xml": inactive,
                    "snapshots": snapshots})

import xml.etree.ElementTree as ET

for pool in pools:
    try:
        root = ET.fromstring(pool["xml"])
    except ET.ParseError:
        continue
    directory = root.findtext("target/path")
    if root.get("type") not in ("dir", "fs", "netfs") or not directory:
        continue
    step[0] = "listing of pool " + pool["name"] + " (" + directory + ")"
    try:
        names = os.listdir(directory)
    except OSError:
        continue
    for entry in names:
        describe(os.path.join(directory, entry))
for dom in domains:
    for text in (dom["xml"], dom["inactive_xml"]):
        if not text:
            continue
        for source in ET.fromstring(text).findall("devices/disk/source"):
            if source.get("file"):
                describe(source.get("file"))

step[0] = "node information"
info = conn.getInfo()
caps = safe(lambda: ET.fromstring(conn.getCapabilities()))
host_cpu = {} if caps is None else {
    "host_uuid": caps.findtext("host/uuid"), "arch": caps.findtext("host/cpu/arch"),
    "cpu_model": caps.findtext("host/cpu/model"), "cpu_vendor": caps.findtext("host/cpu/vendor")}
print(json.dumps({
    "pools": pools,
    "domains": domains,
    "files": files,
    "node": {"cpus": info[2], "memory_kib": info[1] * 1024,
             "free_memory_kib": safe(conn.getFreeMemory, 0) // 1024,
             "libvirt_version": conn.getLibVersion(), "hypervisor_version": safe(conn.getVersion, 0),
             **host_cpu},
}))
sys.stdout.flush()
os._exit(0)
