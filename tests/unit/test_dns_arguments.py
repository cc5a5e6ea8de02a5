"""What build and delete pass to dhcp_reservations on the management node (deploys/vms.py)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pyinfra.context import ctx_host, ctx_state
from pyinfra_testing.util import FakeState, create_host

from deploys.vms import dnsmasq_arguments
from operations.dnsmasq import RELEASE_AS_CONFIGURED


class Data(dict):
    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key, default)


def arguments(**data: Any) -> dict[str, Any]:
    state = FakeState()
    host = create_host(state, name="mgmt-01", data=Data(data))
    with ctx_state.use(state), ctx_host.use(host):
        return dnsmasq_arguments()


def test_delete_without_repeated_settings_reads_dhcp_from_the_node() -> None:
    # mgmt_server.py was run with --data dhcp_range=... --data dns_listen_address=...; delete without them
    # asks the node's own dnsmasq configuration (read with the reservations, one round trip).
    assert arguments(ssh_hostname="10.10.5.2")["release_leases_on"] == RELEASE_AS_CONFIGURED
    assert arguments(dnsmasq_conf=None)["release_leases_on"] is None


def test_with_dhcp_delete_releases_leases_on_the_listen_address() -> None:
    dhcp = {"dhcp_range": "10.10.5.100,10.10.5.200,255.255.255.0,12h"}
    assert arguments(ssh_hostname="10.10.5.2", **dhcp)["release_leases_on"] == "10.10.5.2"
    assert (
        arguments(ssh_hostname="10.10.5.2", dns_listen_address="10.10.5.1", **dhcp)["release_leases_on"]
        == "10.10.5.1"
    )


def test_with_dhcp_but_no_address_says_leases_are_not_released(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pyinfra"):
        args = arguments(dhcp_range="10.10.5.100,10.10.5.200")
    assert args["release_leases_on"] is None
    assert "DHCP leases of deleted VMs are not released: dns_listen_address is not set" in caplog.text
