"""DHCP reservation + DNS name entries for the management node, from the manifest's VMs."""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger

from deploys._host_defaults import HostDataError, dns_listen_address
from deploys._settings import all_vmspecs, flag, setting


def entries() -> list[dict[str, str]]:
    return [
        {"mac": spec.mac, "ip": spec.ipaddress, "hostname": spec.hostname, "short": spec.short_name}
        for spec in all_vmspecs()
    ]


def release_address() -> str | None:
    """Where dnsmasq serves DHCP, so delete can release a deleted VM's lease; None without DHCP.

    The address dnsmasq listens on (``dns_listen_address``, else the management node's IP
    ``ssh_hostname``, as deploys/mgmt_server.py binds it). Without either, leases are not released
    and the output says so.
    """
    if not setting("dhcp_range"):
        return None
    try:
        return dns_listen_address()
    except HostDataError as exc:
        logger.warning(f"{host.print_prefix}DHCP leases of deleted VMs are not released: {exc}")
        return None


def dnsmasq_arguments() -> dict[str, Any]:
    """Paths and options shared by build and delete (the mgmt node may need sudo: ``mgmt_sudo``)."""
    return {
        "hostsfile": setting("dhcp_hostsfile"),
        "addn_hosts": setting("dns_addn_hosts"),
        "dnsmasq_conf": setting("dnsmasq_conf"),
        "pid_file": setting("dnsmasq_pid_file"),
        "release_leases_on": release_address(),
        "_sudo": flag("mgmt_sudo"),
    }
