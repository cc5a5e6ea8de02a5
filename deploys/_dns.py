"""DHCP reservation + DNS name entries for the management node, from the manifest's VMs."""

from __future__ import annotations

from typing import Any

from deploys._settings import all_vmspecs, flag, setting


def entries() -> list[dict[str, str]]:
    return [
        {"mac": spec.mac, "ip": spec.ipaddress, "hostname": spec.hostname, "short": spec.short_name}
        for spec in all_vmspecs()
    ]


def dnsmasq_arguments() -> dict[str, Any]:
    """Paths and options shared by build and delete (the mgmt node may need sudo: ``mgmt_sudo``)."""
    return {
        "hostsfile": setting("dhcp_hostsfile"),
        "addn_hosts": setting("dns_addn_hosts"),
        "dnsmasq_conf": setting("dnsmasq_conf"),
        "pid_file": setting("dnsmasq_pid_file"),
        "_sudo": flag("mgmt_sudo"),
    }
