"""A sandbox node: a long-running holder process owning private mount and UTS namespaces.

Every node (hypervisor, management, guest stand-in) is the same thing underneath: bind mounts
of per-node directories over system paths, a hostname, and daemons started with nsenter.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import proc, sshd

# Binding an empty copy of /etc/skel over /root gives each node a fresh root home: the operator's
# shell start-up files (which may put another python3 first on PATH) and keys stay out of reach.
SKEL = Path("/etc/skel")


@dataclass
class Mount:
    source: str
    target: str
    is_file: bool = False


@dataclass
class Node:
    name: str
    role: str
    address: str
    directory: str
    mounts: list[Mount] = field(default_factory=list)
    holder: int = 0
    holder_start: int = 0
    mnt_ns: str = ""
    # name -> [pid, start time]; the start time guards against recycled pids.
    daemons: dict[str, list[int]] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return Path(self.directory)

    @property
    def sshd_dir(self) -> Path:
        return self.dir / "sshd"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Node:
        mounts = [Mount(**m) for m in data.get("mounts", [])]
        return cls(**{**data, "mounts": mounts})

    def private_dir(self, target: str, subdir: str) -> Path:
        """Create node-local backing storage for target and register the bind mount."""
        source = self.dir / subdir
        source.mkdir(parents=True, exist_ok=True)
        self.mounts.append(Mount(str(source), target))
        return source

    def private_file(self, target: str, subpath: str, content: str) -> Path:
        """Create a node-local file with content and register a file bind mount over target."""
        source = self.dir / subpath
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(content)
        self.mounts.append(Mount(str(source), target, is_file=True))
        return source

    def private_home(self) -> None:
        home = self.dir / "root"
        if not home.exists():
            shutil.copytree(SKEL, home, symlinks=True)
        home.chmod(0o700)
        self.mounts.append(Mount(str(home), "/root"))

    def is_alive(self) -> bool:
        return self.holder > 0 and proc.alive(self.holder, self.holder_start)

    def spawn(self, hostname: str) -> None:
        """Start the holder: apply the bind mounts and hostname inside fresh namespaces."""
        lines = [f"mount --bind {shlex.quote(m.source)} {shlex.quote(m.target)}" for m in self.mounts]
        lines.append(f"hostname {shlex.quote(hostname)}")
        ready = self.dir / "holder.pid"
        ready.unlink(missing_ok=True)
        self.holder = proc.spawn_holder("\n".join(lines), ready, self.dir / "holder.log", uts=True)
        self.holder_start = proc.start_time(self.holder) or 0
        self.mnt_ns = proc.namespace_id(self.holder) or ""

    def start_sshd(self, authorized_keys: Path) -> None:
        sshd.write_config(self.sshd_dir, self.address, authorized_keys)
        self.record_daemon("sshd", sshd.start(self.holder, self.sshd_dir, self.address))

    def record_daemon(self, name: str, pid: int) -> None:
        self.daemons[name] = [pid, proc.start_time(pid) or 0]

    def daemon_pid(self, name: str) -> int | None:
        """The pid of a recorded daemon if that very process is still running."""
        pid, started = self.daemons.get(name, [0, 0])
        return pid if pid and proc.alive(pid, started) else None

    def run(
        self, argv: list[str], *, timeout: float = 60, check: bool = True, netns: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return proc.nsrun(self.holder, argv, timeout=timeout, check=check, netns=netns)

    def stop(self, timeout: float = 10) -> None:
        """Stop everything running in the node, unmount its binds, then end the holder."""
        if not self.mnt_ns or not self.is_alive():
            self._stop_leftovers(timeout)
            return
        # Rescan: an SSH session or qemu may have been forked while the previous round was stopping.
        for _ in range(3):
            members = [pid for pid in proc.pids_in_namespace(self.mnt_ns) if pid != self.holder]
            if not members:
                break
            proc.stop(members, timeout=timeout)
        targets = [mount.target for mount in reversed(self.mounts)]
        if targets:
            self.run(["umount", "--lazy", *targets], check=False, timeout=10)
        proc.stop([self.holder], timeout=timeout)

    def _stop_leftovers(self, timeout: float) -> None:
        # The holder is gone (killed from outside?) but daemons it started may keep the namespace
        # alive. Namespace ids are recycled once a namespace dies, so only trust the id while one
        # of our recorded daemons (same pid and start time) is still inside it.
        if not self.mnt_ns:
            return
        ours = [
            n for n in self.daemons if (pid := self.daemon_pid(n)) and proc.namespace_id(pid) == self.mnt_ns
        ]
        if ours:
            proc.stop(proc.pids_in_namespace(self.mnt_ns), timeout=timeout)

    def ssh_data(self, key: Path, known_hosts: Path) -> dict:
        return sshd.client_data(self.address, key, known_hosts)
