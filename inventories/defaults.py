"""Where things live on the cluster's machines when the data does not say otherwise: the one home of
each default that facts, operations, deploys and the sandbox share.

The settings table (``inventories/settings.py``) maps data keys to them;
every key can be overridden per host, per group or with ``--data key=value``.
"""

from __future__ import annotations

# libvirt connection of every hypervisor (``libvirt_uri``).
LIBVIRT_URI = "qemu:///system"

# Storage pools: the primary (local directory, autostarted) and the secondary (the NFS share).
PRIMARY_POOL = "default"
PRIMARY_STORAGE = "/data01/primary"
SECONDARY_POOL = "secondary"
SECONDARY_STORAGE = "/secondary"

# dnsmasq on the management node: its configuration, pid file, the two files the reservations
# operation owns, and its lease database (Debian's default; RHEL: /var/lib/dnsmasq/dnsmasq.leases).
DNSMASQ_CONF = "/etc/dnsmasq.conf"
DNSMASQ_PID_FILE = "/run/dnsmasq/dnsmasq.pid"
DNSMASQ_DIR = "/etc/kvm-qemu/dnsmasq"
DHCP_HOSTSFILE = f"{DNSMASQ_DIR}/dhcp-hosts"
DNS_ADDN_HOSTS = f"{DNSMASQ_DIR}/hosts"
DHCP_LEASEFILE = "/var/lib/misc/dnsmasq.leases"
ETC_HOSTS = "/etc/hosts"

# Seconds one remote step (a virsh call, the probe, creating a disk file) may take (``command_timeout``).
COMMAND_TIMEOUT = 60
# Seconds a full copy of a base disk may take (``copy_timeout``).
COPY_TIMEOUT = 3600
# Seconds one migration of a VM (or the offline copy of its local disks) may take.
MIGRATE_TIMEOUT = 1800

# Bridge networking on a hypervisor: where the dead-man switch keeps its state while a change is
# armed, and the stamp recording the committed configuration.
BRIDGE_STATE_DIR = "/run/kvm-qemu-bridge"
BRIDGE_STAMP = "/etc/kvm-qemu/bridge.json"
