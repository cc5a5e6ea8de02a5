"""Builders of the ``Hypervisor`` fact for the unit tests, in one place.

Two forms of the same host state: plain data in the shape of ``HostState.to_dict()`` (``*_data``, for a
test that edits a part before use) and the typed ``HostState``/``Domain`` the planners take
(``host_state``, ``built_domain``, ...; ``typed``/``states`` turn plain data into them).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facts.util.host_state import Domain, HostState
from inventories.manifest_model import mac_for

FIXTURES = Path(__file__).parent / "fixtures"
BASE_XML = (FIXTURES / "domains" / "centos7.xml").read_text()
GIB = 1024 * 1024  # KiB in a GiB
BASE_DISK = "/secondary/centos7-vda.img"
URI = "qemu:///system"
SHARED = ("/secondary",)  # the shared directories of the placement tests


# --- plain data -> typed ------------------------------------------------------------------------------


def typed(data: Mapping[str, Any] | HostState) -> HostState:
    """The host state of plain data; a domain in it may already be a ``Domain``."""
    if isinstance(data, HostState):
        return data
    domains = data.get("domains") or {}
    plain = {name: d for name, d in domains.items() if not isinstance(d, Domain)}
    state = HostState.from_dict({**data, "domains": plain})
    ready = {name: d for name, d in domains.items() if isinstance(d, Domain)}
    return HostState(
        pools=state.pools,
        volumes=state.volumes,
        domains={name: ready[name] if name in ready else state.domains[name] for name in domains},
        capacity=state.capacity,
        files=state.files,
    )


def typed_domain(data: Mapping[str, Any] | Domain, name: str = "vm") -> Domain:
    return data if isinstance(data, Domain) else Domain.from_dict(name, data)


def states(hosts: Mapping[str, Mapping[str, Any] | HostState | None]) -> dict[str, HostState | None]:
    """``{host: its typed state, or None when not read}`` of plain data per host."""
    return {name: None if data is None else typed(data) for name, data in hosts.items()}


# --- one hypervisor with the centos7 base and two pools (clone, converge, delete, seeds) ------------


def host_data(domains: dict[str, Any] | None = None, volumes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "pools": {
            "default": {
                "state": "running",
                "autostart": True,
                "path": "/data01/primary",
                "available": 50 * 1024**3,
            },
            "secondary": {
                "state": "running",
                "autostart": False,
                "path": "/secondary",
                "available": 10 * 1024**3,
            },
        },
        "volumes": volumes or {},
        "domains": {"centos7": base_domain_data(), **(domains or {})},
        "capacity": {"cpus": 2, "memory_kib": 24 * GIB},
    }


def host_state(domains: dict[str, Any] | None = None, volumes: dict[str, Any] | None = None) -> HostState:
    return typed(host_data(domains, volumes))


def base_domain_data() -> dict[str, Any]:
    return {
        "state": "shut off",
        "persistent": True,
        "autostart": False,
        "memory_kib": GIB,
        "max_memory_kib": GIB,
        "vcpus": 1,
        "max_vcpus": 1,
        "disks": [
            {"target": "vda", "device": "disk", "path": BASE_DISK, "format": "raw"},
            {"target": "hdc", "device": "cdrom", "path": "/secondary/CentOS-7-x86_64-Minimal-1908.iso"},
        ],
        "interfaces": [{"mac": "52:54:00:00:00:01", "type": "user"}],
        "xml": BASE_XML,
    }


def base_domain() -> Domain:
    return typed_domain(base_domain_data(), "centos7")


def built_domain_data(state: str = "shut off", **overrides: Any) -> dict[str, Any]:
    cfg = {
        "memory_kib": 2 * GIB,
        "max_memory_kib": 4 * GIB,
        "vcpus": 2,
        "max_vcpus": 2,
        "disks": [
            {"target": "vda", "device": "disk", "path": "/data01/primary/kvmhost01-vda.img", "format": "raw"},
            {"target": "hdc", "device": "cdrom", "path": "/secondary/CentOS-7-x86_64-Minimal-1908.iso"},
            {"target": "vdb", "device": "disk", "path": "/data01/primary/kvmhost01-vdb.img", "format": "raw"},
        ],
        "interfaces": [{"mac": mac_for("kvmhost01"), "type": "user"}],
    }
    domain = {
        "state": state,
        "persistent": True,
        "autostart": False,
        **copy.deepcopy(cfg),
        "config": cfg,
        "xml": "",
    }
    domain.update(overrides)
    return domain


def built_domain(state: str = "shut off", **overrides: Any) -> Domain:
    return typed_domain(built_domain_data(state, **overrides), "kvmhost01")


# --- a cluster for drift and prune: every disk a file, pools typed --------------------------------


def drift_domain_data(
    vm: str, disks: list[str], vcpus: int = 2, mac: str | None = None, backing: str = ""
) -> dict[str, Any]:
    entries = [{"target": f"vd{chr(97 + i)}", "device": "disk", "path": p} for i, p in enumerate(disks)]
    if backing:
        entries[0]["backing"] = backing
    config = {
        "vcpus": vcpus,
        "max_vcpus": vcpus,
        "memory_kib": GIB,
        "max_memory_kib": 2 * GIB,
        "disks": entries,
        "interfaces": [{"mac": mac or mac_for(vm)}],
    }
    return {"state": "shut off", "persistent": True, **copy.deepcopy(config), "config": config}


def drift_base_data() -> dict[str, Any]:
    return drift_domain_data("centos7", [BASE_DISK], vcpus=1, mac="52:54:00:00:00:01")


def drift_vm_data(name: str, **kw: Any) -> dict[str, Any]:
    return drift_domain_data(
        name, [f"/data01/primary/{name}-vda.img", f"/data01/primary/{name}-vdb.img"], **kw
    )


def drift_host_data(domains: dict[str, Any], extra_files: dict[str, Any] | None = None) -> dict[str, Any]:
    domains = {"centos7": drift_base_data(), **domains}
    files: dict[str, Any] = {BASE_DISK: {"kind": "file"}}
    for d in domains.values():
        for disk in d["config"]["disks"]:
            files[disk["path"]] = {
                "kind": "file",
                **({"backing": disk["backing"]} if "backing" in disk else {}),
            }
    files.update(extra_files or {})
    return {
        "pools": {
            "default": {"state": "running", "path": "/data01/primary", "type": "dir"},
            "secondary": {"state": "running", "path": "/secondary", "type": "dir"},
        },
        "volumes": {},
        "domains": domains,
        "files": files,
    }


# --- two or three hypervisors for placement and drain: disks with cache modes in the XML --------------

GIB_KIB = 1 << 20


def _cache(mode: str | None) -> str:
    return f" cache='{mode}'" if mode else ""


def placed_domain_data(
    disks: list[tuple[str, str | None]], state: str = "running", cpu: str = "", vcpus: int = 1
) -> dict[str, Any]:
    xml_disks = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'{_cache(cache)}/>"
        f"<source file='{path}'/><target dev='vd{chr(97 + i)}'/></disk>"
        for i, (path, cache) in enumerate(disks)
    )  # fmt: skip
    return {
        "state": state,
        "autostart": False,
        "vcpus": vcpus,
        "memory_kib": GIB_KIB,
        "disks": [{"device": "disk", "path": p, "backing": None} for p, _ in disks],
        "xml": f"<domain><name>x</name>{cpu}<devices>{xml_disks}</devices></domain>",
    }


def placed_host_data(
    domains: dict[str, dict[str, Any]],
    files: list[str] | tuple[str, ...] = (),
    uuid: str = "u1",
    cpus: int = 4,
    memory: int = 8,
) -> dict[str, Any]:
    base = {"centos7": placed_domain_data([(BASE_DISK, None)], state="shut off")}
    return {
        "pools": {"default": {"path": "/data01/primary", "available": 100 << 30},
                  "secondary": {"path": "/secondary", "available": 100 << 30}},
        "volumes": {},
        "domains": {**base, **domains},
        "capacity": {"cpus": cpus, "memory_kib": memory * GIB_KIB, "host_uuid": uuid, "arch": "x86_64",
                     "cpu_model": "qemu64", "cpu_vendor": "AMD"},
        "files": {BASE_DISK: {"kind": "file"}, **{f: {"kind": "file"} for f in files}},
    }  # fmt: skip


def cluster_data(
    vm: dict[str, Any], on: str = "sm-01", shared_files: list[str] | tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    return {
        "sm-01": placed_host_data({"vm1": vm} if on == "sm-01" else {}, shared_files, uuid="u1"),
        "sm-02": placed_host_data({"vm1": vm} if on == "sm-02" else {}, shared_files, uuid="u2"),
    }


def typed_domains(domains: Mapping[str, Mapping[str, Any] | Domain]) -> dict[str, Domain]:
    """``{name: Domain}`` of plain data per domain (e.g. ``{"a": {"state": "running"}}``)."""
    return {name: typed_domain(data, name) for name, data in domains.items()}
