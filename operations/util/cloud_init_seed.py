"""cloud-init NoCloud seeds: what goes into a VM's ``<vm>-seed.iso`` and the command that puts it there.

Pure: no I/O. The seed is an ISO 9660 image (``util/iso9660``) labelled ``cidata`` with three files:

- ``meta-data``: ``instance-id`` = the domain's UUID, ``local-hostname`` = the manifest hostname;
- ``user-data``: ``#cloud-config`` with the users and their SSH keys from host data (``cloud_init_users``);
- ``network-config``: version 2, the NIC with the manifest MAC on DHCPv4.

The instance-id is known before the domain exists: a clone with ``cloudInit`` is defined with
``stable_uuid(vm)`` (``util/domain_xml.clone_xml``), so ``--dry`` shows the seed the build will write. A
domain defined earlier keeps its own UUID, read from the fact. YAML is written by hand: every value
is validated first and strings are emitted JSON-quoted (a valid YAML double-quoted scalar).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import posixpath
import re
from typing import Any

from pyinfra.api import StringCommand

from facts.util.host_state import Domain, FileEntry, HostState
from inventories.manifest_model import VmSpec
from operations.util.disk_files import staged
from operations.util.disk_files import with_cleanup as with_cleanup
from operations.util.domain_xml import stable_uuid
from operations.util.iso9660 import build_iso
from operations.util.virsh import DEFAULT_TIMEOUT, all_of, bounded, q, session_limit, sh, virsh
from operations.util.vm_plan import VmPlan

SEED_SUFFIX = "-seed.iso"
VOLUME_ID = "cidata"
SUDO_ALL = "ALL=(ALL) NOPASSWD:ALL"
SCSI_CONTROLLER = '<controller type="scsi" model="virtio-scsi"/>'

_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SSH_KEY = re.compile(
    r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [\x20-\x7e]{1,200})?"
)
_SUDO_RULE = re.compile(r"[\x20-\x7e]{1,200}")
_USER_KEYS = {"name", "ssh_authorized_keys", "sudo"}


class SeedError(ValueError):
    """Host data for a seed is invalid (the message names the key and the value)."""


def validate_users(value: Any, key: str = "cloud_init_users") -> list[dict[str, Any]]:
    """``[{name, ssh_authorized_keys: [...], sudo}]`` checked with full matches; normalised copies.

    ``sudo``: true (``ALL=(ALL) NOPASSWD:ALL``), false/absent (none) or one sudoers rule.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise SeedError(f"{key}: expected a list of users, got {value!r}")
    users: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, user in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(user, dict):
            raise SeedError(f"{where}: expected a mapping with name, ssh_authorized_keys, sudo, got {user!r}")
        unknown = sorted(set(user) - _USER_KEYS)
        if unknown:
            raise SeedError(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (allowed: {sorted(_USER_KEYS)})"
            )
        name = user.get("name")
        if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
            raise SeedError(
                f"{where}.name: {name!r} is not a user name (lower case letters, digits, '_', '-'; "
                "starts with a letter or '_'; at most 32 characters)"
            )
        if name in seen:
            raise SeedError(f"{where}.name: {name!r} is listed twice")
        seen.add(name)
        keys = user.get("ssh_authorized_keys", [])
        if not isinstance(keys, list):
            raise SeedError(f"{where}.ssh_authorized_keys: expected a list of public keys, got {keys!r}")
        for number, line in enumerate(keys):
            if not isinstance(line, str) or not _SSH_KEY.fullmatch(line):
                raise SeedError(
                    f"{where}.ssh_authorized_keys[{number}]: {line!r} is not one OpenSSH public key line "
                    "(type, base64 key, optional comment)"
                )
        sudo = user.get("sudo", False)
        if sudo is True:
            sudo = SUDO_ALL
        elif sudo is not False and (not isinstance(sudo, str) or not _SUDO_RULE.fullmatch(sudo)):
            raise SeedError(f"{where}.sudo: {sudo!r} is not true, false or one sudoers rule")
        users.append({"name": name, "ssh_authorized_keys": list(keys), "sudo": sudo})
    return users


def _quoted(value: str) -> str:
    return json.dumps(value)


def seed_files(spec: VmSpec, instance_id: str, users: list[dict[str, Any]]) -> dict[str, bytes]:
    """The three files of the seed (``users`` as ``validate_users`` returns them)."""
    meta = f"instance-id: {instance_id}\nlocal-hostname: {spec.hostname}\n"
    lines = ["#cloud-config", f"fqdn: {_quoted(spec.hostname)}"]
    if users:
        lines.append("users:")
        for user in users:
            lines.append(f"  - name: {_quoted(user['name'])}")
            if user["sudo"]:
                lines.append(f"    sudo: {_quoted(user['sudo'])}")
            if user["ssh_authorized_keys"]:
                lines.append("    ssh_authorized_keys:")
                lines += [f"      - {_quoted(k)}" for k in user["ssh_authorized_keys"]]
    network = (
        "version: 2\n"
        "ethernets:\n"
        "  nic0:\n"
        "    match:\n"
        f"      macaddress: {_quoted(spec.mac)}\n"
        "    dhcp4: true\n"
    )
    return {
        "meta-data": meta.encode(),
        "user-data": ("\n".join(lines) + "\n").encode(),
        "network-config": network.encode(),
    }


def seed_path(pool_dir: str, vm: str) -> str:
    return posixpath.join(pool_dir, f"{vm}{SEED_SUFFIX}")


def _free_target(domain: Domain | None) -> str:
    used = {d.target for d in domain.all_disks} if domain is not None else set()
    return next(f"sd{c}" for c in "abcdefghijklmnopqrstuvwxyz" if f"sd{c}" not in used)


def _untrusted(entry: FileEntry) -> str | None:
    """Why an existing seed file cannot be kept as it is, or None: this package writes seeds as root,
    0600, so a seed owned by anyone else, or with other permissions, may have been planted or changed
    by someone else (its content could be rewritten before the guest boots)."""
    uid, mode = entry.uid, entry.mode
    if uid is None or mode is None:
        return "owner and mode unknown"
    if uid != 0 or mode != 0o600:
        return f"owned by uid {uid} with mode {mode:04o}, not root 0600"
    return None


def seed_plan(
    spec: VmSpec,
    host: HostState,
    uri: str,
    users: list[dict[str, Any]],
    executing: bool = True,
    timeout: int = DEFAULT_TIMEOUT,
) -> VmPlan:
    """Write ``<pool>/<vm>-seed.iso`` when missing or different, attach it as a cdrom when it is not.

    The file is compared by SHA-256 (the fact reads it on the host); one that is not root's and 0600
    (the probe's ``lstat``) is replaced even when its content matches. A file that is not a plain file
    (a link, a directory) is refused. A new file is created exclusively, 0600, in the pool directory
    (``with_cleanup``), filled from stdin (gzip + base64 of the image); an out-of-date one is removed
    first. The cdrom goes on a virtio-scsi controller (one is added when the domain has no SCSI
    controller), read-only, in the persistent definition: a running guest sees it at its next boot.
    Before the domain exists (``executing`` False: ``--dry``, or a build earlier in the same run), the
    plan assumes the UUID the clone gets (``stable_uuid``).
    """
    plan = VmPlan(spec.name)
    domain = host.domains.get(spec.name)
    pool = host.pools.get(spec.pool)
    if domain is None and executing:
        plan.notes.append("not defined on this host: no seed (run deploys/build.py)")
        return plan
    if pool is None or not pool.path:
        plan.error = f"storage pool {spec.pool} is not defined on this host (see deploys/pools.py)"
        return plan
    instance_id = domain.uuid if domain else stable_uuid(spec.name)
    image = build_iso(VOLUME_ID, seed_files(spec, str(instance_id), users))
    path = seed_path(pool.path, spec.name)
    entry = host.file(path)
    if entry.kind not in ("file", "missing"):
        plan.error = f"{path} is a {entry.kind}, not a plain file; refusing to replace it"
        return plan
    what = f"(instance-id {instance_id}, hostname {spec.hostname}, {len(users)} user(s))"
    steps = _write_seed_when_stale(plan, entry, path, pool.path, image, what, timeout)
    steps += _attach_seed_when_detached(plan, spec, host, domain, path, uri, timeout)
    _run_steps_as_one_command(plan, steps, domain, timeout)
    return plan


def _write_seed_when_stale(
    plan: VmPlan, entry: FileEntry, path: str, pool_dir: str, image: bytes, what: str, timeout: int
) -> list[StringCommand]:
    """The steps that (re)write the seed unless the file on the host is this image, root's and 0600;
    the action and the stdin (gzip + base64 of the image) go on ``plan``."""
    exists = entry.kind == "file"
    untrusted = _untrusted(entry) if exists else None
    if exists and entry.sha256 == hashlib.sha256(image).hexdigest() and not untrusted:
        return []
    steps = [_remove_plain_file(path)] if exists else []
    fill = bounded(
        f"write {path}", timeout, "sh", "-c", q('base64 -d | gzip -dc > "$1"'), "sh", q(staged(path))
    )
    steps.append(with_cleanup([path], pool_dir, fill, timeout, grouped=True))
    if untrusted:
        plan.actions.append(f"replace {path}, {untrusted}, with a new seed {what}")
    else:
        plan.actions.append(f"{'rewrite' if exists else 'write'} {path} {what}")
    plan.stdin = base64.b64encode(gzip.compress(image, mtime=0)).decode("ascii") + "\n"
    return steps


def _remove_plain_file(path: str) -> StringCommand:
    """Remove ``path``, failing instead when it has become a link or anything but a plain file."""
    return sh(
        "{ for f in",
        q(path),
        '; do if [ -L "$f" ] || { [ -e "$f" ] && [ ! -f "$f" ]; }; then',
        'echo "kvm-qemu: $f is not a plain file any more; refusing to replace it" >&2;',
        "exit 1; fi;",
        'rm -f -- "$f"; done; }',
    )


def _attach_seed_when_detached(
    plan: VmPlan,
    spec: VmSpec,
    host: HostState,
    domain: Domain | None,
    path: str,
    uri: str,
    timeout: int,
) -> list[StringCommand]:
    """The steps that attach the seed as a read-only SCSI cdrom (with a virtio-scsi controller when
    there is none) unless the domain has it already; the actions go on ``plan``."""
    if domain is not None and any(d.path == path for d in domain.config.disks):
        return []
    # Before the define, the clone will have its base's devices (cdroms, controllers).
    basis = domain if domain is not None else host.domains.get(spec.srcvm)
    steps: list[StringCommand] = []
    if basis is None or not basis.config.scsi_models:
        steps.append(_add_scsi_controller(uri, spec.name, timeout))
        plan.actions.append("add a virtio-scsi controller")
    target = _free_target(basis)
    steps.append(_attach_cdrom(uri, spec.name, path, target, timeout))
    plan.actions.append(f"attach {path} as cdrom {target}")
    return steps


def _add_scsi_controller(uri: str, vm: str, timeout: int) -> StringCommand:
    return sh(
        "printf '%s\\n'",
        q(SCSI_CONTROLLER),
        "|",
        virsh(uri, "attach-device", vm, "/dev/stdin", "--config", timeout=timeout),
        ">/dev/null",
    )


def _attach_cdrom(uri: str, vm: str, path: str, target: str, timeout: int) -> StringCommand:
    return sh(
        virsh(
            uri,
            "attach-disk",
            vm,
            path,
            target,
            "--type",
            "cdrom",
            "--targetbus",
            "scsi",
            "--subdriver",
            "raw",
            "--mode",
            "readonly",
            "--config",
            timeout=timeout,
        ),
        ">/dev/null",
    )


def _run_steps_as_one_command(
    plan: VmPlan, steps: list[StringCommand], domain: Domain | None, timeout: int
) -> None:
    """All ``steps`` as the plan's one command with its time limit (a running guest: a note)."""
    if not steps:
        return
    if domain is not None and domain.active:
        plan.notes.append("running: the guest reads the new seed at its next boot")
    plan.command = all_of(steps)
    plan.limit = session_limit(len(steps) + 3, timeout)


def stray_seed_note(spec: VmSpec, host: HostState) -> str | None:
    """A note when a VM without ``cloudInit`` still has its seed attached (it is left alone)."""
    domain = host.domains.get(spec.name)
    if domain is None:
        return None
    for disk in domain.config.disks:
        if (disk.path or "").endswith(f"/{spec.name}{SEED_SUFFIX}"):
            return f"{disk.path} is still attached although cloudInit is off: left as is"
    return None
