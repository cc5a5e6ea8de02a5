"""Bring the sandbox cluster up and down, report on it, and manage guest stand-ins.

The cluster network is a network namespace (sandbox/network.py) holding a bridge with the management
node's address; every libvirtd and the management node's dnsmasq run inside it, sshd on loopback.
The base VM boots the guest built by sandbox/guest_image.py.

Layout of the state directory ($KVM_SANDBOX_DIR, default /tmp/kvm-qemu-sandbox):
  state.json        what is running (pids with start times, namespaces, mounts, created paths)
  inventory.json    SSH data for pyinfra: hosts, mgmt (with its dnsmasq data), guest_defaults, guests
  mgmt-manifest.json  the hosts, for running deploys/mgmt_server.py on the management node at up
  env.sh            exports KVM_INVENTORY_DATA and KVM_MGMT_HOST
  ssh/              client key, authorized_keys, known_hosts; guests.config (ProxyCommand) and
                    guest_known_hosts (the base disk's host key for every cluster address)
  secondary/        shared by all hypervisors as /secondary (the NFS stand-in)
  nodes/<name>/     per-node backing dirs for the private bind mounts, pid files, logs
  guests/<name>/    the same for guest stand-ins
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import basevm, guest, guest_image, hypervisor, mgmt, network, proc, system
from .node import Node
from .proc import SandboxError
from .sshd import generate_key, write_known_hosts

log = logging.getLogger("sandbox")

DEFAULT_STATE_DIR = "/tmp/kvm-qemu-sandbox"
DEFAULT_CACHE_DIR = "/var/cache/kvm-qemu-sandbox"
LOCK_FILE = "/run/lock/kvm-qemu-sandbox.lock"
MGMT_NAME = "mgmt-01"
MGMT_ADDRESS = "127.0.2.1"
MAX_HOSTS = 99
# Paths that must exist on the real root fs for the bind mounts, besides each node's targets.
SSHD_PRIVSEP_DIR = Path("/run/sshd")


def host_name(index: int) -> str:
    return f"sm-{index:02d}"


def host_address(index: int) -> str:
    return f"127.0.1.{index}"


def state_dir() -> Path:
    """The sandbox state directory ($KVM_SANDBOX_DIR or the default); inventory.json lives here."""
    return Layout.current().root


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def current(cls) -> Layout:
        return cls(Path(os.environ.get("KVM_SANDBOX_DIR", DEFAULT_STATE_DIR)).absolute())

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.json"

    @property
    def env(self) -> Path:
        return self.root / "env.sh"

    @property
    def key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "ssh" / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.root / "ssh" / "known_hosts"

    @property
    def guest_ssh_config(self) -> Path:
        return self.root / "ssh" / "guests.config"

    @property
    def guest_known_hosts(self) -> Path:
        return self.root / "ssh" / "guest_known_hosts"

    @property
    def mgmt_manifest(self) -> Path:
        return self.root / "mgmt-manifest.json"

    @property
    def secondary(self) -> Path:
        return self.root / "secondary"

    def node_dir(self, name: str) -> Path:
        return self.root / "nodes" / name

    def guest_dir(self, name: str) -> Path:
        return self.root / "guests" / name

    @property
    def capabilities_cache(self) -> Path:
        # Outside the state dir on purpose: it survives down, so the next up skips QEMU probing.
        return Path(os.environ.get("KVM_SANDBOX_CACHE", DEFAULT_CACHE_DIR)) / "qemu-capabilities"

    @property
    def lock(self) -> Path:
        # One lock for the whole machine, not per state dir: every sandbox uses the same loopback
        # addresses, so two can never run at once. Outside the state dir, which down removes.
        return Path(LOCK_FILE)


@dataclass
class State:
    hosts: int
    base_vm: str
    virt_type: str
    nodes: dict[str, Node]
    guests: dict[str, Node]
    created_paths: list[str]
    netns: str = ""
    # How the accelerator was chosen: guest_image.Accel fields (cpu_model, boot_seconds, ...).
    accel: dict = field(default_factory=dict)

    @property
    def hypervisors(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == "hypervisor"]

    @property
    def mgmt(self) -> Node:
        return self.nodes[MGMT_NAME]

    def all_nodes(self) -> list[Node]:
        return [*self.guests.values(), *self.nodes.values()]

    def to_json(self) -> dict:
        return {
            "hosts": self.hosts,
            "base_vm": self.base_vm,
            "virt_type": self.virt_type,
            "created_paths": self.created_paths,
            "netns": self.netns,
            "accel": self.accel,
            "nodes": {name: node.to_json() for name, node in self.nodes.items()},
            "guests": {name: node.to_json() for name, node in self.guests.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> State:
        return cls(
            hosts=data["hosts"],
            base_vm=data["base_vm"],
            virt_type=data["virt_type"],
            created_paths=data["created_paths"],
            netns=data.get("netns", ""),
            accel=data.get("accel", {}),
            nodes={name: Node.from_json(n) for name, n in data["nodes"].items()},
            guests={name: Node.from_json(n) for name, n in data["guests"].items()},
        )


# --- state files -------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    # Write-then-rename so readers (and a crashed `up`) never see a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _load(layout: Layout) -> State | None:
    try:
        return State.from_json(json.loads(layout.state.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise SandboxError(f"unreadable sandbox state {layout.state}: {exc}") from exc


def _save(layout: Layout, state: State) -> None:
    _write_json(layout.state, state.to_json())


def _inventory(layout: Layout, state: State) -> dict:
    def data(node: Node) -> dict:
        return node.ssh_data(layout.key, layout.known_hosts)

    return {
        "hosts": {
            node.name: {**data(node), **hypervisor.migration_data(node.address)} for node in state.hypervisors
        },
        "mgmt": {"name": MGMT_NAME, "data": {**data(state.mgmt), **mgmt.inventory_data()}},
        # Stand-ins listen on loopback: no ProxyCommand for them.
        "guests": {name: {**data(node), "ssh_config_file": None} for name, node in state.guests.items()},
        # Booted guests live on the cluster network: reached through the namespace (ProxyCommand).
        "guest_defaults": {
            "ssh_user": "root",
            "ssh_key": str(layout.key),
            "ssh_config_file": str(layout.guest_ssh_config),
            "ssh_known_hosts_file": str(layout.guest_known_hosts),
            "ssh_strict_host_key_checking": "yes",
        },
    }


def _publish(layout: Layout, state: State) -> dict:
    """Write known_hosts, inventory.json and env.sh from the state; return the inventory."""
    write_known_hosts(
        layout.known_hosts,
        {node.address: node.sshd_dir / "ssh_host_ed25519_key" for node in state.all_nodes()},
    )
    inventory = _inventory(layout, state)
    _write_json(layout.inventory, inventory)
    layout.env.write_text(f"export KVM_INVENTORY_DATA={layout.inventory}\nexport KVM_MGMT_HOST={MGMT_NAME}\n")
    _save(layout, state)
    return inventory


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """Serialise up/down/guests so two callers never build two clusters on top of each other."""
    layout.lock.parent.mkdir(parents=True, exist_ok=True)
    with open(layout.lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- health ------------------------------------------------------------------------------------


def _node_health(node: Node) -> dict[str, bool]:
    health = {"holder": node.is_alive()}
    health.update({name: node.daemon_pid(name) is not None for name in node.daemons})
    return health


def _fully_up(state: State) -> bool:
    return all(all(_node_health(node).values()) for node in state.nodes.values())


def _anything_alive(state: State) -> bool:
    return any(any(_node_health(node).values()) for node in state.all_nodes())


# --- up ----------------------------------------------------------------------------------------


def _preflight(hosts: int) -> None:
    for index in range(1, hosts + 1):
        system.check_port_free(host_address(index), 22)
    system.check_port_free(MGMT_ADDRESS, 22)
    system.check_port_free(MGMT_ADDRESS, mgmt.DNS_PORT, socket.SOCK_DGRAM)
    system.check_port_free(MGMT_ADDRESS, mgmt.DNS_PORT)
    if network.exists() and not network.in_use():
        # Left behind by a down that did not know about it; nothing runs inside: remove it.
        log.info("removing the stale, unused network namespace %s", network.NETNS)
        network.delete()
    if network.exists():
        raise SandboxError(
            f"network namespace {network.NETNS} exists but no sandbox is recorded; "
            f"`ip netns del {network.NETNS}`"
        )


def _create_mountpoints(state: State) -> None:
    """Make sure every bind-mount target exists on the real root fs; remember what was added."""
    targets = {Path(m.target): m.is_file for node in state.all_nodes() for m in node.mounts}
    targets[SSHD_PRIVSEP_DIR] = False
    for target, is_file in sorted(targets.items()):
        created = system.ensure_mountpoint(target, is_file=is_file)
        state.created_paths.extend(str(p) for p in created)
    if SSHD_PRIVSEP_DIR.stat().st_mode & 0o022:
        SSHD_PRIVSEP_DIR.chmod(0o755)


def _new_state(layout: Layout, hosts: int, base_vm: str) -> State:
    virt_type = ""  # chosen by booting the guest (guest_image.choose_accelerator)
    nodes = {}
    for index in range(1, hosts + 1):
        name = host_name(index)
        nodes[name] = Node(name, "hypervisor", host_address(index), str(layout.node_dir(name)))
    nodes[MGMT_NAME] = Node(MGMT_NAME, "mgmt", MGMT_ADDRESS, str(layout.node_dir(MGMT_NAME)))
    return State(hosts, base_vm, virt_type, nodes, {}, [])


def _prepare_files(layout: Layout, state: State) -> None:
    for path in (layout.key.parent, layout.secondary):
        path.mkdir(parents=True, exist_ok=True)
    generate_key(layout.key, "kvm-qemu-sandbox")
    layout.authorized_keys.write_text(Path(f"{layout.key}.pub").read_text())
    layout.guest_ssh_config.write_text(network.ssh_config())
    layout.guest_known_hosts.touch()
    for node in state.hypervisors:
        node.dir.mkdir(parents=True, exist_ok=True)
        hypervisor.prepare(node, layout.secondary)
        hypervisor.ssh_client_config(node, layout.key, layout.known_hosts)
    state.mgmt.dir.mkdir(parents=True, exist_ok=True)
    mgmt.prepare(state.mgmt)


def _start_hypervisor(node: Node, layout: Layout, capabilities: Path) -> None:
    hypervisor.copy_capabilities(capabilities, hypervisor.capabilities_dir(node))
    hypervisor.start_libvirt(node, str(network.netns_path()))
    node.start_sshd(layout.authorized_keys)


def _start_mgmt(node: Node, layout: Layout) -> None:
    node.start_sshd(layout.authorized_keys)


PYINFRA = Path(sys.executable).with_name("pyinfra")


def _configure_mgmt(layout: Layout, state: State) -> None:
    """Write the management node's dnsmasq configuration with the project's own deploy, then start it."""
    _write_json(layout.mgmt_manifest, [{"host": node.name, "vmspecs": []} for node in state.hypervisors])
    env = {
        **proc.CLEAN_ENV,
        "KVM_MANIFEST": str(layout.mgmt_manifest),
        "KVM_INVENTORY_DATA": str(layout.inventory),
        "KVM_MGMT_HOST": MGMT_NAME,
        "PYINFRA_PROGRESS": "off",
    }
    argv = [str(PYINFRA), "-y", "--limit", MGMT_NAME, "inventories/manifest.py", "deploys/mgmt_server.py"]
    result = subprocess.run(
        argv, cwd=mgmt.REPO, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise SandboxError(
            "deploys/mgmt_server.py failed on the management node:\n"
            + (result.stdout + result.stderr)[-3000:]
        )
    mgmt.start_dnsmasq(state.mgmt)


def _parallel(pool: ThreadPoolExecutor, fn: Callable[[Node], object], items: list[Node]) -> None:
    """Run fn over items on the pool and re-raise the first failure."""
    for future in [pool.submit(fn, item) for item in items]:
        future.result()


def _write_base_xml(
    layout: Layout, state: State, image: guest_image.GuestImage, accel: guest_image.Accel
) -> None:
    """The base VM and its shared-client-id twin (same disk), booting from /secondary."""
    disk = f"{hypervisor.SECONDARY}/{basevm.disk_name(state.base_vm)}"
    boot = guest_image.GuestImage(
        **{
            **asdict(image),
            "kernel": Path(hypervisor.SECONDARY) / image.kernel.name,
            "initrd": Path(hypervisor.SECONDARY) / image.initrd.name,
        }
    )
    for name, cmdline in (
        (state.base_vm, image.cmdline),
        (state.base_vm + basevm.SHARED_ID_SUFFIX, image.cmdline_with(clientid="shared")),
    ):
        xml = basevm.domain_xml(name, disk, accel, boot, cmdline=cmdline, bridge=network.BRIDGE)
        (layout.root / f"{name}.xml").write_text(xml)


def _define_base_vm(layout: Layout, state: State, node: Node) -> None:
    for name in (state.base_vm, state.base_vm + basevm.SHARED_ID_SUFFIX):
        hypervisor.virsh(node, "define", str(layout.root / f"{name}.xml"))


def _prepare_guest(layout: Layout, state: State, size_gib: int, data_mib: int) -> None:
    """Build (or take from the cache) the guest, place kernel and initrd in /secondary, write the
    base VM's root disk, and choose the accelerator by booting the guest (cached too)."""
    with _phase("guest image"):
        image = guest_image.build()
        placed = guest_image.install(image, layout.secondary)
    with _phase("base disk"):
        disk = layout.secondary / basevm.disk_name(state.base_vm)
        host_key = basevm.create_disk(disk, image, Path(f"{layout.key}.pub").read_text(), size_gib, data_mib)
    with _phase("accelerator"):
        accel = guest_image.choose_accelerator(image)
    state.virt_type = accel.domain_type
    state.accel = asdict(accel)
    # Every clone boots with the base disk's host key: pin it for every address of the network.
    kind, blob = host_key.split()[:2]
    layout.guest_known_hosts.write_text(
        "".join(f"{address} {kind} {blob}\n" for address in network.NETWORK.hosts())
    )
    _write_base_xml(layout, state, placed, accel)


@contextlib.contextmanager
def _phase(what: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    log.debug("%s: %.2fs", what, time.monotonic() - started)


def _start_daemons(pool: ThreadPoolExecutor, layout: Layout, state: State) -> None:
    first, *rest = state.hypervisors
    mgmt_done = pool.submit(_start_mgmt, state.mgmt, layout)
    # The first libvirtd probes QEMU (unless the cache from an earlier run is still valid); the
    # others start from its capability cache, which is also kept for the next run.
    with _phase(f"libvirt on {first.name}"):
        _start_hypervisor(first, layout, layout.capabilities_cache)
    hypervisor.copy_capabilities(hypervisor.capabilities_dir(first), layout.capabilities_cache)
    with _phase(f"libvirt on {len(rest)} more hosts"):
        _parallel(pool, lambda n: _start_hypervisor(n, layout, hypervisor.capabilities_dir(first)), rest)
    mgmt_done.result()


def _bring_up(layout: Layout, state: State, base_data_mib: int, base_size_gib: int) -> dict:
    # Record state before touching anything, so `down` can always undo a crashed `up`.
    layout.root.mkdir(parents=True, exist_ok=True)
    _save(layout, state)
    with _phase("cluster network"):
        # Before the nodes' namespaces: they see /run/netns/NAME, so daemons in them can enter it.
        state.netns = network.NETNS
        _save(layout, state)
        state.created_paths.extend(network.create(state.netns))
        _save(layout, state)
    with _phase("node files"):
        _prepare_files(layout, state)
        _create_mountpoints(state)
        _save(layout, state)
    with ThreadPoolExecutor(max_workers=8) as pool:
        # The guest image, the base disk's random data and the accelerator probe are I/O or CPU
        # bound; overlap them with daemon start-up.
        disk_done: Future = pool.submit(_prepare_guest, layout, state, base_size_gib, base_data_mib)
        try:
            with _phase("namespaces"):
                for node in state.nodes.values():
                    node.spawn(node.name)
                    _save(layout, state)
            _start_daemons(pool, layout, state)
        finally:
            with _phase("waiting for the base disk"):
                disk_done.result()
        _save(layout, state)
        _publish(layout, state)
        with _phase("management node configuration and base VM definitions"):
            mgmt_done = pool.submit(_configure_mgmt, layout, state)
            _parallel(pool, lambda n: _define_base_vm(layout, state, n), state.hypervisors)
            mgmt_done.result()
    return _publish(layout, state)


def _check_args(hosts: int, base_vm: str, base_data_mib: int, base_size_gib: int) -> None:
    if not 1 <= hosts <= MAX_HOSTS:
        raise SandboxError(f"--hosts must be between 1 and {MAX_HOSTS}")
    if not guest.NAME_RE.match(base_vm):
        raise SandboxError(f"invalid base VM name {base_vm!r}")
    if (
        base_data_mib < 0
        or base_size_gib < 1
        or (base_data_mib + basevm.ROOTFS_RESERVE_MIB) << 20 > base_size_gib << 30
    ):
        raise SandboxError("base VM data must fit in the disk after its first MiB")


def bring_up(
    hosts: int = 2, base_vm: str = "centos7", base_data_mib: int = 1024, base_size_gib: int = 40
) -> tuple[dict, bool]:
    """Like up(), also telling whether the sandbox was already up."""
    _check_args(hosts, base_vm, base_data_mib, base_size_gib)
    layout = Layout.current()
    with _locked(layout):
        state = _load(layout)
        if state is not None:
            if _fully_up(state):
                if state.hosts != hosts:
                    raise SandboxError(
                        f"sandbox already up with {state.hosts} hosts (asked for {hosts}); run down first"
                    )
                return json.loads(layout.inventory.read_text()), True
            if _anything_alive(state):
                raise SandboxError(f"sandbox in {layout.root} is only partly running; run down first")
            log.info("removing stale sandbox state in %s", layout.root)
            _teardown(layout, state)
        elif layout.root.exists() and any(layout.root.iterdir()):
            raise SandboxError(f"{layout.root} exists but holds no sandbox state; remove it first")
        system.ensure_packages()
        _preflight(hosts)
        state = _new_state(layout, hosts, base_vm)
        log.info("starting %d hypervisors and %s", hosts, MGMT_NAME)
        try:
            return _bring_up(layout, state, base_data_mib, base_size_gib), False
        except BaseException:
            log.error("start-up failed; tearing down what was started")
            _teardown(layout, state)
            raise


def up(hosts: int = 2, base_vm: str = "centos7", base_data_mib: int = 1024, base_size_gib: int = 40) -> dict:
    """Start the sandbox (or return the running one with the same host count); returns the inventory."""
    return bring_up(hosts, base_vm, base_data_mib, base_size_gib)[0]


# --- down --------------------------------------------------------------------------------------


def _stop_nodes(nodes: list[Node]) -> None:
    if not nodes:
        return
    with ThreadPoolExecutor(max_workers=8) as pool:
        _parallel(pool, lambda n: n.stop(), nodes)


def _teardown(layout: Layout, state: State) -> None:
    _stop_nodes(list(state.guests.values()))
    _stop_nodes(list(state.nodes.values()))
    if state.netns:
        network.delete(state.netns)
    for path in reversed(state.created_paths):
        if Path(path) == network.NETNS_DIR:
            network.remove_netns_dir()
        else:
            system.remove_mountpoint(Path(path))
    shutil.rmtree(layout.root, ignore_errors=False)


def down() -> bool:
    """Stop everything the sandbox started and remove its state dir; False if nothing was up."""
    layout = Layout.current()
    with _locked(layout):
        state = _load(layout)
        if state is None:
            if layout.root.is_dir() and not any(layout.root.iterdir()):
                layout.root.rmdir()
            return False
        _teardown(layout, state)
        return True


# --- guests ------------------------------------------------------------------------------------


def _require_up(layout: Layout) -> State:
    state = _load(layout)
    if state is None or not _fully_up(state):
        raise SandboxError("sandbox is not up; run `python -m sandbox up` first")
    return state


def _start_guest(layout: Layout, state: State, name: str, address: str) -> Node:
    node = Node(name, "guest", address, str(layout.guest_dir(name)))
    node.dir.mkdir(parents=True, exist_ok=True)
    guest.prepare(node, state.base_vm)
    state.guests[name] = node
    node.spawn(state.base_vm)
    _save(layout, state)
    node.start_sshd(layout.authorized_keys)
    return node


def guests_up(guests: dict[str, str]) -> dict:
    """Start guest stand-ins {name: address in 127.0.3.0/24}; returns the inventory's "guests"
    section ({name: SSH data} for every running guest).

    Guests already running with the same address are kept; a name or address clash is an error.
    """
    try:
        guest.validate(guests)
    except ValueError as exc:
        raise SandboxError(str(exc)) from exc
    layout = Layout.current()
    with _locked(layout):
        state = _require_up(layout)
        taken = {node.address: name for name, node in state.guests.items()}
        new = {}
        for name, address in guests.items():
            if name in state.nodes:
                raise SandboxError(f"guest name {name} is already a sandbox node")
            existing = state.guests.get(name)
            if existing is not None and existing.address == address and existing.is_alive():
                continue
            if existing is not None or taken.get(address, name) != name:
                raise SandboxError(
                    f"guest {name}={address} clashes with a running guest; run guests down first"
                )
            system.check_port_free(address, 22)
            new[name] = address
        try:
            for name, address in new.items():
                _start_guest(layout, state, name, address)
        except BaseException:
            _stop_nodes([state.guests.pop(name) for name in new if name in state.guests])
            _save(layout, state)
            raise
        return _publish(layout, state)["guests"]


def guests_down() -> None:
    """Stop every guest stand-in and drop them from the inventory."""
    layout = Layout.current()
    with _locked(layout):
        state = _load(layout)
        if state is None or not state.guests:
            return
        _stop_nodes(list(state.guests.values()))
        for name in list(state.guests):
            shutil.rmtree(layout.guest_dir(name), ignore_errors=True)
            del state.guests[name]
        _publish(layout, state)


# --- status ------------------------------------------------------------------------------------


def _node_status(node: Node, with_libvirt: bool) -> dict:
    health = _node_health(node)
    info: dict = {
        "address": node.address,
        "pids": {"holder": node.holder, **{name: pid for name, (pid, _) in node.daemons.items()}},
        "alive": health,
    }
    if with_libvirt and all(health.values()):
        info["libvirt"] = hypervisor.libvirt_version(node)
    return info


def status() -> dict:
    """What runs where: nodes, addresses, pids and their liveness, libvirt versions, KVM or TCG."""
    layout = Layout.current()
    state = _load(layout)
    if state is None:
        return {"up": False, "state_dir": str(layout.root)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        hosts = dict(
            zip(
                [n.name for n in state.hypervisors],
                pool.map(lambda n: _node_status(n, True), state.hypervisors),
                strict=True,
            )
        )
    accelerator = "KVM" if state.virt_type == "kvm" else "TCG"
    return {
        "up": _fully_up(state),
        "state_dir": str(layout.root),
        "inventory": str(layout.inventory),
        "virt_type": state.virt_type,
        "accelerator": accelerator,
        "accel": state.accel,
        "virt": accelerator,
        "base_vm": state.base_vm,
        "hosts": hosts,
        "mgmt": {MGMT_NAME: _node_status(state.mgmt, False)},
        "guests": {name: _node_status(node, False) for name, node in state.guests.items()},
    }


# --- verification ------------------------------------------------------------------------------


def snapshot() -> dict | None:
    """The raw recorded state (pids, namespaces, mounts, created paths), for checking down later."""
    layout = Layout.current()
    state = _load(layout)
    return None if state is None else {"state_dir": str(layout.root), **state.to_json()}


def leftovers(recorded: dict) -> list[str]:
    """What a snapshot() taken before down still finds running, mounted or on disk afterwards."""
    problems = []
    state_dir = recorded["state_dir"]
    for group in ("nodes", "guests"):
        for name, data in recorded[group].items():
            node = Node.from_json(data)
            if node.is_alive():
                problems.append(f"{name}: namespace holder {node.holder} still running")
            problems.extend(
                f"{name}: {daemon} {pid} still running"
                for daemon, (pid, started) in node.daemons.items()
                if proc.alive(pid, started)
            )
            # A mount namespace (and every mount in it) lives while any process is inside it.
            if node.mnt_ns and (users := proc.pids_in_namespace(node.mnt_ns)):
                problems.append(f"{name}: mount namespace still used by {users}")
    if recorded.get("netns") and network.exists(recorded["netns"]):
        problems.append(f"network namespace {recorded['netns']} still exists")
    problems.extend(
        f"cluster address in the root namespace: {line}" for line in network.addresses_in_root_namespace()
    )
    mounts = Path("/proc/self/mountinfo").read_text()
    if state_dir in mounts:
        problems.append(f"something from {state_dir} is still mounted")
    problems.extend(f"{path} still exists" for path in recorded["created_paths"] if Path(path).exists())
    if Path(state_dir).exists():
        problems.append(f"{state_dir} still exists")
    return problems
