"""The host side of the libvirt facts: one Python process, one libvirt connection, everything as JSON.

Run on the hypervisor as ``python3 -c PROBE URI``. It lists pools (active ones refreshed first, so disk
files created outside libvirt appear), their volumes, the domains (live XML, plus the persistent XML
of running domains) and the node's size. Raw libvirt XML is printed as is; the controller parses it
(``facts/_libvirt_parse.py``), so this script stays small and needs only the libvirt bindings.
It must run on the hosts' own Python 3 (3.6 on RHEL 8), so it uses nothing newer.
"""

PROBE = r"""
import json, sys
try:
    import libvirt
except ImportError:
    sys.stderr.write("kvm-qemu: the libvirt Python bindings are missing on this host "
                     "(install python3-libvirt, e.g. with deploys/kvm_host.py)\n")
    sys.exit(3)
libvirt.registerErrorHandler(lambda ctx, err: None, None)
uri = sys.argv[1]
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

pools = []
for pool in conn.listAllStoragePools(0):
    active = bool(safe(pool.isActive, 0))
    volumes = []
    if active:
        safe(lambda: pool.refresh(0))
        for volume in safe(lambda: pool.listAllVolumes(0), []):
            xml = safe(lambda: volume.XMLDesc(0))
            if xml:
                volumes.append(xml)
    pools.append({"name": pool.name(), "active": active, "autostart": bool(safe(pool.autostart, 0)),
                  "persistent": bool(safe(pool.isPersistent, 0)), "xml": safe(lambda: pool.XMLDesc(0), ""),
                  "volumes": volumes})

domains = []
for dom in conn.listAllDomains(0):
    state = safe(dom.state, [0])[0]
    persistent = bool(safe(dom.isPersistent, 0))
    active = bool(safe(dom.isActive, 0))
    live = safe(lambda: dom.XMLDesc(0))
    if live is None:
        continue  # undefined while we looked
    inactive = safe(lambda: dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) if persistent and active else None
    domains.append({"name": dom.name(), "uuid": dom.UUIDString(), "state": state, "persistent": persistent,
                    "autostart": bool(safe(dom.autostart, 0)), "xml": live, "inactive_xml": inactive})

info = conn.getInfo()
print(json.dumps({
    "pools": pools,
    "domains": domains,
    "node": {"cpus": info[2], "memory_kib": info[1] * 1024,
             "free_memory_kib": safe(conn.getFreeMemory, 0) // 1024,
             "libvirt_version": conn.getLibVersion(), "hypervisor_version": safe(conn.getVersion, 0)},
}))
"""
