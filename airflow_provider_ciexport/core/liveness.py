"""Whether the process that wrote a lease is known to be dead: it ran on this machine and is gone.

A lease records who holds it (:func:`holder`). Another process may treat it as dead before it
expires only when every machine identifier it records matches this one's (host name, boot id,
machine id, pid namespace) and no process with its pid exists (:func:`dead_here`). A lease from
another host, from a clone of this machine (another boot id or machine id), from another container's
pid namespace, or without a boot id is never "dead here": it counts until it expires.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

#: Where this machine's identifiers are read: the boot id changes at every boot, so it tells apart
#: cloned VMs (which share a host name, a machine id and the initial pid namespace's inode number) and
#: gives the pid namespace's inode number a meaning (it is unique only within one running kernel);
#: the machine id tells apart machines that happen to share a boot id (it is absent in many containers).
_MACHINE_FILES = {
    "boot_id": "/proc/sys/kernel/random/boot_id",
    "machine_id": "/etc/machine-id",
}
_MACHINE_ID_SHAPE = re.compile(r"[0-9a-fA-F-]{16,64}")


def pid_namespace() -> int | None:
    """The inode number of this process's pid namespace, ``None`` where it cannot be read."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def machine_ids() -> dict[str, str | None]:
    """This machine's boot id and machine id, each ``None`` when it cannot be read."""
    ids: dict[str, str | None] = {}
    for name, path in _MACHINE_FILES.items():
        try:
            with open(path, "rb") as f:
                value = f.read(80).decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            value = ""
        ids[name] = value if _MACHINE_ID_SHAPE.fullmatch(value) else None
    return ids


def holder() -> dict[str, Any]:
    """Who this process is, as a lease records it: host name, pid, pid namespace, boot and machine id."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_namespace": pid_namespace(),
        **machine_ids(),
    }


def gone(pid: Any) -> bool:
    """Whether no process with this id runs in this pid namespace (``False`` when unsure)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def dead_here(held: Any, here: dict[str, Any] | None = None) -> bool:
    """Whether ``held`` (a :func:`holder` record) names a process of this machine that no longer exists.

    Every identifier must match ``here`` (this process's :func:`holder` when not given) and this
    machine's boot id and pid namespace must be known; a record from elsewhere, or one that cannot be
    placed, is not dead here.

    :param held: the record a lease carries (anything: the lease is not authenticated).
    :param here: this process's record, when the caller keeps one.
    """
    if not isinstance(held, dict):
        return False
    here = holder() if here is None else here
    return (
        here["pid_namespace"] is not None
        and here["boot_id"] is not None
        and all(held.get(name) == here[name] for name in ("host", "pid_namespace", "boot_id", "machine_id"))
        and "machine_id" in held
        and gone(held.get("pid"))
    )
