"""mptcpctl.toml: the daemon's settings, read with the standard library. Every key is listed
in KEYS with its default and documented in README; an unknown key is an error naming the key
and its line. Command-line flags override the file."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import BadInput

DEFAULT_PATH = Path("/etc/mptcpctl/mptcpctl.toml")

# key: (default, type, description) — README's configuration table is this table.
KEYS: dict[str, tuple] = {
    "pm": ("userspace", str, "path manager: userspace (mptcpctl decides) or kernel (endpoints)"),
    "policy": ("fullmesh", str, "fullmesh, backup or ndiffports"),
    "backup_ifaces": ([], list, "interfaces whose subflows are backup (policy backup)"),
    "ndiffports": (2, int, "subflows over the initial address pair (policy ndiffports)"),
    "ifaces": ([], list, "interfaces to manage (empty: every up, non-loopback interface)"),
    "exclude": ([], list, "interfaces never to manage"),
    "max_subflows": (8, int, "subflows per connection, at most the kernel's 8"),
    "announce": (True, bool, "server side: announce our other addresses (ADD_ADDR)"),
    "retry_base_ms": (100, int, "first retry delay of a failed subflow; doubles each time"),
    "retry_max_ms": (5000, int, "longest retry delay"),
    "retry_attempts": (8, int, "attempts per subflow before giving up until the network changes"),
    "datapath": (True, bool, "attach the BPF datapath to managed interfaces"),
    "cc": ("lia", str, "coupled congestion control: lia, olia, balia or uncoupled"),
    "metrics": ("", str, "Prometheus endpoint PORT, ADDR:PORT or [IPV6]:PORT (empty: off)"),
    # --- DSS checksum fix (controller/dssfix.py) ---
    "fix_dss_checksum": (False, bool, "gateway: fix the DSS checksum of segments an ALG rewrote"),
}


@dataclass(frozen=True)
class DaemonConfig:
    netns: str | None = None
    pm: str = "userspace"
    policy: str = "fullmesh"
    backup_ifaces: tuple[str, ...] = ()
    ndiffports: int = 2
    ifaces: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_subflows: int = 8
    announce: bool = True
    retry_base_ms: int = 100
    retry_max_ms: int = 5000
    retry_attempts: int = 8
    datapath: bool = True
    cc: str = "lia"
    metrics: str = ""
    fix_dss_checksum: bool = False  # DSS checksum fix at tc egress (controller/dssfix.py)
    source: str | None = field(default=None, compare=False)  # the file it came from

    def validate(self) -> DaemonConfig:
        if self.pm not in ("userspace", "kernel"):
            raise BadInput(f"pm must be userspace or kernel, not {self.pm!r}")
        if self.policy not in ("fullmesh", "backup", "ndiffports"):
            raise BadInput(f"unknown policy {self.policy!r} (fullmesh, backup, ndiffports)")
        if not 1 <= self.max_subflows <= 8:
            raise BadInput("max_subflows must be between 1 and 8 (the kernel's limit)")
        if not 1 <= self.ndiffports <= 8:
            raise BadInput("ndiffports must be between 1 and 8")
        if self.retry_base_ms <= 0 or self.retry_max_ms < self.retry_base_ms:
            raise BadInput("retry_base_ms must be > 0 and <= retry_max_ms")
        if self.retry_attempts < 1:
            raise BadInput("retry_attempts must be at least 1")
        if self.cc not in ("lia", "olia", "balia", "uncoupled"):
            raise BadInput(f"unknown cc {self.cc!r} (lia, olia, balia, uncoupled)")
        if self.metrics:
            from .metrics import parse_listen

            parse_listen(self.metrics)
        if self.policy == "backup" and not self.backup_ifaces:
            raise BadInput("policy backup needs at least one backup interface")
        return self


def _line_of(text: str, key: str) -> int:
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return n
    return 0


def load(path: Path | str | None, required: bool = False) -> DaemonConfig:
    """The file's settings over the defaults. A missing default file is fine; a missing file
    the user named is an error."""
    p = Path(path) if path else DEFAULT_PATH
    if not p.exists():
        if required:
            raise BadInput(f"config file {p} does not exist")
        return DaemonConfig()
    try:
        text = p.read_text()
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{p}: {e}") from e
    except UnicodeDecodeError as e:
        raise BadInput(f"{p}: not UTF-8 text (byte {e.start})") from e
    except RecursionError as e:
        raise BadInput(f"{p}: nested too deeply") from e
    except OSError as e:
        raise BadInput(f"cannot read config file {p}: {e.strerror}") from e
    values = {}
    for key, value in data.items():
        if key not in KEYS:
            raise BadInput(f"{p}:{_line_of(text, key)}: unknown key {key!r}")
        default, typ, _ = KEYS[key]
        if typ is int and isinstance(value, bool) or not isinstance(value, typ):
            raise BadInput(f"{p}:{_line_of(text, key)}: {key} must be a {typ.__name__}")
        if typ is list:
            if not all(isinstance(v, str) for v in value):
                raise BadInput(f"{p}:{_line_of(text, key)}: {key} must be a list of names")
            value = tuple(value)
        values[key] = value
    return replace(DaemonConfig(), source=str(p), **values).validate()
