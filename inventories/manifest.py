"""Cluster inventory generated from the manifest (``KVM_MANIFEST``, default ./manifest.json).

Groups: ``kvm_hosts`` (one host per manifest entry; host data ``kvm_vmspecs``) and ``mgmt`` (the
management node running dnsmasq: ``@local`` or ``KVM_MGMT_HOST``; group data ``kvm_all_vmspecs``)
and, when ``KVM_NFS_SERVER`` names a host, ``nfs_server``. Both vmspec keys hold ``VmSpec`` objects
(inventories/manifest_model.py), which the deploys hand to the operations as they are.
Guests are never part of this inventory: pyinfra connects to every host it lists.
"""

import os as _os

import inventories.loader as _loader

_entries = _loader.load_or_exit()
_extra = _loader.connection_data()
_host_extra = _extra.get("hosts", {})
_mgmt_extra = _extra.get("mgmt", {})

kvm_hosts = [
    (
        _entry.host,
        {
            **_entry.ssh,
            **_host_extra.get(_entry.host, {}),
            "kvm_vmspecs": list(_entry.vmspecs),
        },
    )
    for _entry in _entries
]

_mgmt_name = _os.environ.get(_loader.MGMT_HOST_ENV) or _mgmt_extra.get("name") or "@local"
mgmt = (
    [(_mgmt_name, dict(_mgmt_extra.get("data", {})))],
    {"kvm_all_vmspecs": [_spec for _entry in _entries for _spec in _entry.vmspecs]},
)

# The NFS server (deploys/nfs_server.py): a host named by KVM_NFS_SERVER, else the mgmt host serves.
_nfs_name = _os.environ.get("KVM_NFS_SERVER")
if _nfs_name:
    _nfs_data = dict(_mgmt_extra.get("data", {})) if _nfs_name == _mgmt_name else {}
    nfs_server = [(_nfs_name, {**_host_extra.get(_nfs_name, {}), **_nfs_data})]
