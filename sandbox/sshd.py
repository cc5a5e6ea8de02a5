"""Per-node sshd: keys, configuration, start-up and the client data pyinfra needs."""

from __future__ import annotations

import socket
from pathlib import Path

from .proc import SandboxError, nsrun, read_pid_file, run, wait_for

SSH_PORT = 22


def generate_key(path: Path, comment: str) -> None:
    """Create an ed25519 key pair without passphrase (paramiko and OpenSSH both read this format)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def public_key(path: Path) -> str:
    """'ssh-ed25519 AAAA...' without the comment, as used in known_hosts."""
    kind, blob = Path(f"{path}.pub").read_text().split()[:2]
    return f"{kind} {blob}"


def write_config(sshd_dir: Path, address: str, authorized_keys: Path) -> Path:
    """Write an sshd_config bound to one loopback address with its own host key and pid file."""
    sshd_dir.mkdir(parents=True, exist_ok=True)
    generate_key(sshd_dir / "ssh_host_ed25519_key", f"host-{address}")
    config = sshd_dir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {address}",
                f"Port {SSH_PORT}",
                f"HostKey {sshd_dir / 'ssh_host_ed25519_key'}",
                f"PidFile {sshd_dir / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized_keys}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                # The key files live under /tmp, whose sticky 1777 mode fails the StrictModes path check.
                "StrictModes no",
                "PrintMotd no",
                "PrintLastLog no",
                "UseDNS no",
                # pyinfra opens many sessions in parallel during a deploy; don't drop them.
                "MaxStartups 100:30:200",
                "MaxSessions 100",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    return config


def start(holder_pid: int, sshd_dir: Path, address: str) -> int:
    """Start sshd inside the node's namespaces so every SSH session lands there; return its pid."""
    config = sshd_dir / "sshd_config"
    pid_file = sshd_dir / "sshd.pid"
    log_file = sshd_dir / "sshd.log"
    nsrun(holder_pid, ["/usr/sbin/sshd", "-f", str(config), "-E", str(log_file)])
    wait_for(lambda: _banner(address), f"sshd on {address}:{SSH_PORT} (log: {log_file})", timeout=15)
    pid = wait_for(lambda: read_pid_file(pid_file), f"sshd pid file {pid_file}", timeout=5)
    return pid


def _banner(address: str) -> bool:
    # A connect plus the protocol banner proves sshd is listening and answering on this address.
    try:
        with socket.create_connection((address, SSH_PORT), timeout=1) as sock:
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def client_data(address: str, key: Path, known_hosts: Path) -> dict:
    """Host data for pyinfra's SSH connector (keys named as in pyinfra's inventory data)."""
    return {
        "ssh_hostname": address,
        "ssh_port": SSH_PORT,
        "ssh_user": "root",
        "ssh_key": str(key),
        "ssh_known_hosts_file": str(known_hosts),
        "ssh_strict_host_key_checking": "yes",
    }


def write_known_hosts(path: Path, host_keys: dict[str, Path]) -> None:
    """known_hosts with one plain (unhashed) line per address; port 22 needs no [addr]:port form."""
    if any(not key.exists() for key in host_keys.values()):
        raise SandboxError("a host key is missing; the sandbox state is incomplete")
    lines = [f"{address} {public_key(key)}" for address, key in sorted(host_keys.items())]
    path.write_text("".join(f"{line}\n" for line in lines))
