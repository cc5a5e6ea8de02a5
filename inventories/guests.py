"""Guest inventory generated from the manifest: group ``vms``, one host per VM, reached at its ``sshHost``.

Kept apart from ``manifest.py`` so a build never tries to reach a guest that does not exist yet.
"""

import inventories.loader as _loader

_entries = _loader.load_or_exit()
_data = _loader.connection_data()
_guest_extra = _data.get("guests", {})
# Connection data for every guest (e.g. an ssh_config_file with a ProxyCommand), under the per-guest data.
_guest_defaults = _data.get("guest_defaults", {})

vms = [
    (
        _spec.name,
        {
            "ssh_hostname": _spec.ssh_host,
            **_guest_defaults,
            **_guest_extra.get(_spec.name, {}),
            "kvm_vmspec": _spec,
            "kvm_hypervisor": _entry.host,
        },
    )
    for _entry in _entries
    for _spec in _entry.vmspecs
]
