"""Readiness after start: wait until every VM holds its DHCP lease and answers SSH.

    pyinfra inventories/manifest.py deploys/wait.py [--data wait_timeout=300]

One bounded command on the management node (deploys/_readiness.py) watches dnsmasq's lease file
for each VM's manifest MAC and IP, then its SSH port at the address pyinfra uses. Prints a table
(VM, IP, lease after N s, SSH after N s) and fails, naming them, when VMs are not ready in time.
"""

import json

from pyinfra import logger
from pyinfra.operations import python

from deploys._readiness import (
    WAIT_DEFAULTS,
    ReadinessProbe,
    not_ready,
    probe_config,
    table_lines,
    timeout_value,
)
from deploys._settings import DEFAULTS, SettingError, flag, is_mgmt, setting

_DEFAULTS = {**DEFAULTS, **WAIT_DEFAULTS}


def _settings() -> tuple[float, str, int]:
    try:
        timeout = timeout_value(setting("wait_timeout", _DEFAULTS))
    except ValueError as exc:
        raise SettingError(str(exc)) from None
    port = setting("wait_ssh_port", _DEFAULTS)
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise SettingError(f"wait_ssh_port={port!r}: expected a TCP port")
    return timeout, str(setting("dhcp_leasefile", _DEFAULTS)), int(port)


def _wait(state, host) -> bool:  # noqa: ANN001 - pyinfra passes both to a callback naming them
    specs = host.data.get("kvm_all_vmspecs") or []
    timeout, leasefile, port = _settings()
    config = probe_config(specs, timeout, leasefile, str(setting("dnsmasq_pid_file")), port)
    result = host.get_fact(
        ReadinessProbe, config_json=json.dumps(config), _sudo=flag("mgmt_sudo"), _timeout=int(timeout) + 30
    )
    if not isinstance(result, dict):
        for line in table_lines(specs, result):
            logger.info(f"{host.print_prefix}{line}")
        if result.note:
            logger.warning(f"{host.print_prefix}{result.note}")
        missing = not_ready(specs, result)
    else:
        missing = ["(the readiness probe printed nothing)"]
    if missing:
        logger.error(f"{host.print_prefix}not ready after {timeout:g} s: {', '.join(missing)}")
        return False
    return True


if is_mgmt():
    _settings()  # bad values stop the run here, before anything waits
    python.call(name="Wait until every VM holds its lease and answers SSH", function=_wait)
