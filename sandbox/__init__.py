"""A multi-host KVM cluster on one machine: hypervisors, a management node and guest stand-ins.

Each node is a set of private mount (and UTS) namespaces with its own daemons and its own sshd
on a loopback address, so pyinfra deploys to it exactly as to a remote machine.
"""

from .cluster import down, guests_down, guests_up, state_dir, status, up
from .proc import SandboxError

__all__ = ["SandboxError", "down", "guests_down", "guests_up", "state_dir", "status", "up"]
