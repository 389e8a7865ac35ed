"""Per-network-namespace sysctls: read, write, and a saved set of old values that can be put
back (also after a crash: it round-trips through JSON). /proc/sys/net follows the netns of the
thread that opens the file, so entering the namespace is enough (checked by the lab tests)."""

from __future__ import annotations

import errno
import json
import os

from .errors import BadInput, MissingFeature, MptcpctlError, NotRoot
from .netns import entered

PROC_SYS = "/proc/sys"


def path_of(name: str) -> str:
    """net.mptcp.enabled -> /proc/sys/net/mptcp/enabled (a name with '/' is taken as a path,
    for components holding dots such as net/ipv4/conf/eth0.100/rp_filter)."""
    rel = name if "/" in name else name.replace(".", "/")
    parts = rel.strip("/").split("/")
    if not rel.strip("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise BadInput(f"{name!r} is not a sysctl name")
    return os.path.join(PROC_SYS, *parts)


def read(name: str, netns: str | None = None) -> str | None:
    """The sysctl's value (whitespace-trimmed), or None if this kernel/netns has no such one."""
    with entered(netns):
        try:
            with open(path_of(name)) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None


def write(name: str, value: str, netns: str | None = None) -> None:
    with entered(netns):
        try:
            with open(path_of(name), "w") as f:
                f.write(str(value))
        except FileNotFoundError as exc:
            raise MissingFeature(f"this kernel has no sysctl {name}") from exc
        except PermissionError as exc:
            raise NotRoot(f"setting {name} needs root") from exc
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise BadInput(f"the kernel refused {name}={value}") from exc
            raise MptcpctlError(f"cannot set {name}: {exc.strerror}") from exc
        except ValueError as exc:   # a NUL in the name (a corrupt saved.json)
            raise BadInput(f"no such sysctl {name!r}") from exc


class SavedSysctls:
    """Sysctls we changed in one netns, with the values they had before the first change.
    set() records then writes; restore() writes the old values back, newest change first."""

    def __init__(self, netns: str | None = None, saved: dict[str, str] | None = None):
        self.netns = netns
        self.saved: dict[str, str] = dict(saved or {})   # name -> value before we changed it

    def set(self, name: str, value: str) -> None:
        if name not in self.saved:
            old = read(name, self.netns)
            if old is None:
                raise MissingFeature(f"this kernel has no sysctl {name}")
            self.saved[name] = old
        write(name, value, self.netns)

    def restore(self) -> None:
        """Put every saved value back; forget the ones restored. Raises the first failure after
        trying them all (the failed ones stay saved for another try)."""
        errors = []
        for name in reversed(list(self.saved)):
            try:
                write(name, self.saved[name], self.netns)
                del self.saved[name]
            except MptcpctlError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def to_json(self) -> str:
        return json.dumps({"netns": self.netns, "saved": self.saved}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SavedSysctls:
        try:
            data = json.loads(text)
            saved = {str(k): str(v) for k, v in data["saved"].items()}
            for name in saved:   # a name leading out of /proc/sys is not ours: trust none
                path_of(name)
            netns = data.get("netns")
            if not (netns is None or isinstance(netns, str)):
                raise TypeError(f"netns {netns!r} is not a name")
            return cls(netns, saved)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise BadInput(f"not a saved-sysctls file: {exc}") from exc

    def save(self, path: str) -> None:
        """Write to `path` atomically (rename), so a crash never leaves half a file."""
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> SavedSysctls:
        with open(path) as f:
            return cls.from_json(f.read())


def userspace_pm_sysctl(netns: str | None = None) -> tuple[str, str]:
    """The sysctl (name, value) that selects the userspace path manager on this kernel."""
    if read("net.mptcp.path_manager", netns) is not None:   # kernels >= 6.15
        return ("net.mptcp.path_manager", "userspace")
    return ("net.mptcp.pm_type", "1")


def mptcp_enabled(netns: str | None = None) -> bool:
    return read("net.mptcp.enabled", netns) == "1"


def userspace_pm_available(netns: str | None = None) -> bool:
    if read("net.mptcp.path_manager", netns) is not None:
        available = read("net.mptcp.available_path_managers", netns) or ""
        return "userspace" in available.split()
    return read("net.mptcp.pm_type", netns) is not None
