"""Clean clones: ``virt-sysprep`` on a new clone's disks, after the copy and before the define.

Clones of one base share /etc/machine-id, SSH host keys, DHCP client state and logs. ``sysprep: true``
resets them on the new disks with libguestfs (no guest is booted) and sets the manifest hostname. The
host needs ``virt-sysprep`` (libguestfs-tools; ``deploys/kvm_host.py`` installs it with
``kvm_guestfs_tools=true``): without it the clone fails at once, naming the host and the tool, before
any file is made.
"""

from __future__ import annotations

from pyinfra.api import StringCommand

from operations.util.virsh import bounded, q, sh

TOOL = "virt-sysprep"
# What makes a clone an individual, as the original ran it (dhcp-client-state, logfiles, machine-id,
# then the hostname), plus SSH host keys and persistent NIC names; ``customize`` sets the hostname.
OPERATIONS = (
    "dhcp-client-state,dhcp-server-state,logfiles,machine-id,net-hwaddr,ssh-hostkeys,"
    "udev-persistent-net,customize"
)
# The host keys are removed: make new ones at the first boot (Debian's sshd does not do it itself).
FIRSTBOOT = "ssh-keygen -A && { systemctl restart sshd || systemctl restart ssh || true; }"


def tool_check(vm: str) -> StringCommand:
    """Fails (exit 1) with a message naming the host and the missing tool when virt-sysprep is absent."""
    return sh(
        "command -v",
        TOOL,
        '>/dev/null 2>&1 || { echo "kvm-qemu: $(uname -n): virt-sysprep is not installed'
        " (libguestfs-tools; deploys/kvm_host.py installs it with kvm_guestfs_tools=true): sysprep of",
        q(vm),
        'refused, nothing was made" >&2; exit 1; };',
    )


def sysprep_command(hostname: str, disks: list[tuple[str, str]], timeout: int) -> StringCommand:
    """``virt-sysprep`` on ``disks`` ((path, format) pairs), bounded by ``timeout`` seconds."""
    args: list[str | StringCommand | object] = []
    for path, fmt in disks:
        args += ["--format", q(fmt), "-a", q(path)]
    return bounded(
        f"virt-sysprep of {', '.join(p for p, _ in disks)}",
        timeout,
        TOOL,
        "-q",
        *args,  # type: ignore[arg-type]
        "--operations",
        q(OPERATIONS),
        "--hostname",
        q(hostname),
        "--firstboot-command",
        q(FIRSTBOOT),
    )
