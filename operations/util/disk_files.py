"""New disk files: created by root only, filled where nobody else can reach them, linked into the pool."""

from __future__ import annotations

import posixpath
from typing import Any

from pyinfra.api import StringCommand

from operations.util.virsh import (
    bounded,
    q,
    sh,
)


def qcow2_overlay(step: str, timeout: int, backing: str, backing_format: str, path: str) -> StringCommand:
    """``qemu-img create`` of a new qcow2 overlay ``path`` on ``backing``, bounded and named ``step``."""
    overlay = ("qemu-img", "create", "-q", "-f", "qcow2", "-F", q(backing_format), "-b", q(backing), q(path))
    return bounded(step, timeout, *overlay)


def staged(path: str) -> str:
    """Where ``with_cleanup`` has its command fill ``path``: the same name in the private staging
    directory the command runs in (``./<name>``); the file reaches ``path`` only once it is full."""
    return "./" + posixpath.basename(path)


def with_cleanup(
    paths: list[str],
    pool_dir: str,
    command: StringCommand,
    timeout: int,
    grouped: bool = False,
    then: StringCommand | None = None,
) -> StringCommand:
    """Make ``paths`` (new files in ``pool_dir``) as 0600 files filled by ``command``, then run ``then``.

    The pool directory may be writable by others (an older setup's group kvm, an NFS share's 1777),
    who could swap a file for a link between any check and a tool reopening it by path. So the files
    are created (O_EXCL) and filled (``command`` names them with ``staged``) in a private directory,
    made with ``mktemp -d`` in the pool directory (same filesystem) and checked after ``cd`` (0700,
    ours, its parent the pool directory, empty: a swapped one is refused); the command runs in it.
    Each full file is then hard-linked to its path with ``ln -T``, which never replaces or follows
    anything there (an entry that appeared meanwhile is refused, named), and its staging name goes.
    A path that exists already as anything, a dangling link included, is refused before anything
    is made. If anything fails, what was made is removed (staged files by their name in the private
    directory, published ones only if this command linked them) and the staging directory goes.
    ``grouped``: in a subshell, whose status is the result, for use inside a longer command.
    """
    quoted: list[Any] = [q(p) for p in paths]
    after: list[str | StringCommand] = ["&&", then] if then is not None else []
    stop = "exit 1"
    body = sh(
        "umask 077; out=0; in=; t=; cleanup() { if [ -n \"$in\" ]; then for f in",
        *quoted,
        '; do rm -f -- "./${f##*/}"; done; fi; i=0; for f in',
        *quoted,
        '; do [ "$i" -ge "$out" ] || rm -f -- "$d/${f##*/}"; i=$((i + 1)); done;',
        'if [ -n "$t" ]; then cd / && rmdir -- "$t"; fi; };',
        "for f in",
        *quoted,
        '; do if [ -e "$f" ] || [ -L "$f" ]; then',
        'echo "kvm-qemu: $f already exists; refusing to overwrite it" >&2;',
        stop,
        "; fi; done;",
        "d=$(",
        bounded(f"resolve {pool_dir}", timeout, "readlink", "-f", "--", q(pool_dir)),
        ") ||",
        stop,
        "; for f in",
        *quoted,
        '; do if [ "$(readlink -f -- "${f%/*}")" != "$d" ]; then',
        'echo "kvm-qemu: $f is not a file in the pool directory $d; refusing it" >&2;',
        stop,
        "; fi; done; trap cleanup EXIT;",
        't=$(mktemp -d -- "$d/.kvm-qemu-XXXXXXXX") ||',
        stop,
        ';  if ! cd -P -- "$t" || [ "$(stat -c %a -- .)" != 700 ] || [ -n "$(ls -A)" ]',
        '|| [ "$(stat -c %d:%i -- ..)" != "$(stat -L -c %d:%i -- "$d")" ]',
        # The owner is ours, except on NFS, where root may be squashed to another user.
        '|| { [ "$(stat -c %u -- .)" != "$(id -u)" ] && [ "$(stat -f -c %T -- .)" != nfs ]; }; then',
        'echo "kvm-qemu: the private directory $t in $d was swapped; refusing to use it" >&2;',
        stop,
        # The command creates the files it fills (cp, qemu-img, truncate, a redirection); one it leaves
        # out is made empty afterwards. Not before: nothing can be planted in the private directory, and
        # copying into a file made beforehand costs a flush of all its data at close (ext4 takes
        # truncate-and-rewrite for a file being replaced).
        "; fi; in=1; if",
        command,
        "&& for f in",
        *quoted,
        '; do [ -e "./${f##*/}" ] || ( set -C; : > "./${f##*/}" ) || break; done',
        "&& for f in",
        *quoted,
        '; do if ! ln -T -- "./${f##*/}" "$d/${f##*/}"; then',
        'echo "kvm-qemu: $d/${f##*/} appeared meanwhile; refusing to replace it" >&2; break; fi;',
        'out=$((out + 1)); rm -f -- "./${f##*/}"; done && [',
        q(len(paths)),
        '-eq "$out" ]',
        *after,
        '; then trap - EXIT; cd / && { rmdir -- "$t" || true; }; else cleanup; trap - EXIT;',
        stop,
        "; fi",
    )
    if grouped:
        # A subshell: the umask, directory, trap and variables stay inside, and its status is the result.
        return sh("(", body, ")")
    return body
