"""The coupled congestion control's BPF half: load bpf/mptcp_sockops.c (bpfload), attach it
to the cgroup v2 root (alongside other programs: BPF_F_ALLOW_MULTI), follow one network
namespace's MPTCP subflows, read their TCP state and write their window clamps."""

from __future__ import annotations

import contextlib
import ctypes as C
import os
import socket
import time
from pathlib import Path

from . import abi, datapath
from .bpfload import BPF
from .errors import DatapathError, MissingFeature
from .libbpf import PinnedMap, pin

SOURCE = datapath.BPF_DIR / "mptcp_sockops.c"
BPF_CGROUP_SOCK_OPS = 3
BPF_F_ALLOW_MULTI = 2
SO_NETNS_COOKIE = 71
PINNED = ("tcp_state", "cwnd_clamp")


def cgroup2_root() -> str:
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return parts[1]
    raise MissingFeature("no cgroup v2 hierarchy is mounted")


def netns_cookie() -> int:
    """The cookie of this thread's network namespace (what bpf_get_netns_cookie returns)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int.from_bytes(raw, "little")


class SockOps:
    """Loaded and attached for the namespace this thread is in; close() lifts every clamp it
    set (as far as the sockets' next ACKs allow within `drain` seconds), detaches, unpins."""

    def __init__(self, ns: str | None, pin_to: Path | None = None, on_loaded=None):
        """on_loaded(prog_id) runs before the program is attached, so whoever must detach it
        after a crash can record its id first."""
        self.cgroup = cgroup2_root()
        self.pins: list[Path] = []
        self.cg_fd = -1
        self.bpf = datapath.compile_bpf(SOURCE, progs={"mptcp_sockops": BPF.SOCK_OPS})
        self.fn = self.bpf.load_func(b"mptcp_sockops", BPF.SOCK_OPS)
        self.state = PinnedMap(self.bpf[b"tcp_state"].map_fd, abi.FlowKey, abi.SfTcpState)
        self.clamps = PinnedMap(self.bpf[b"cwnd_clamp"].map_fd, abi.FlowKey, C.c_uint32)
        cfg = PinnedMap(self.bpf[b"cc_config"].map_fd, C.c_uint32, abi.CcConfig)
        cfg.update(C.c_uint32(0), abi.CcConfig(netns_cookie=netns_cookie()))
        try:
            if on_loaded is not None:
                on_loaded(self.prog_id)
            self.cg_fd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
            self.bpf.attach_func(self.fn, self.cg_fd, BPF_CGROUP_SOCK_OPS, BPF_F_ALLOW_MULTI)
        except Exception as e:
            self.close(drain=0)
            raise DatapathError(f"attaching sockops to {self.cgroup} failed: {e}") from e
        if pin_to is not None:
            pin_to.mkdir(parents=True, exist_ok=True)
            for name in PINNED:
                path = pin_to / name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                pin(self.bpf[name.encode()].map_fd, str(path))
                self.pins.append(path)

    @property
    def prog_id(self) -> int:
        return prog_id_of(self.fn.fd)

    def subflows(self) -> dict[bytes, abi.SfTcpState]:
        """TCP state of every followed subflow, by raw FlowKey bytes."""
        return {bytes(k): v for k, v in self.state.items()}

    def set_clamp(self, key: abi.FlowKey, packets: int) -> None:
        self.clamps.update(key, C.c_uint32(max(1, min(int(packets), abi.CLAMP_NONE))))

    def lift_all(self) -> None:
        for k in self.clamps.keys():
            self.clamps.update(k, C.c_uint32(abi.CLAMP_NONE))

    def close(self, drain: float = 1.0) -> None:
        if self.bpf is None:
            return
        if drain > 0:
            self.lift_all()
            deadline = time.monotonic() + drain
            while time.monotonic() < deadline and any(
                    s.clamp not in (0, abi.CLAMP_NONE) for _k, s in self.state.items()):
                time.sleep(0.02)
        if self.cg_fd >= 0:
            with contextlib.suppress(Exception):
                self.bpf.detach_func(self.fn, self.cg_fd, BPF_CGROUP_SOCK_OPS)
            os.close(self.cg_fd)
            self.cg_fd = -1
        for p in self.pins:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.bpf.close()
        self.bpf = None


class _ProgInfo(C.Structure):
    _fields_ = [("type", C.c_uint32), ("id", C.c_uint32), ("tag", C.c_uint8 * 8),
                ("pad", C.c_uint8 * 200)]


def prog_id_of(fd: int) -> int:
    from .libbpf import lib

    info = _ProgInfo()
    n = C.c_uint32(C.sizeof(info))
    f = lib().bpf_obj_get_info_by_fd
    f.argtypes = [C.c_int, C.c_void_p, C.POINTER(C.c_uint32)]
    if f(fd, C.byref(info), C.byref(n)) != 0:
        return 0
    return info.id


def attached_ids(cgroup: str | None = None) -> list[int]:
    """Program ids attached to the cgroup for sockops (what tests check after `down`)."""
    from .libbpf import lib

    path = cgroup or cgroup2_root()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = (C.c_uint32 * 64)()
        cnt = C.c_uint32(64)
        flags = C.c_uint32(0)
        q = lib().bpf_prog_query
        q.argtypes = [C.c_int, C.c_int, C.c_uint32, C.POINTER(C.c_uint32), C.c_void_p,
                      C.POINTER(C.c_uint32)]
        if q(fd, BPF_CGROUP_SOCK_OPS, 0, C.byref(flags), ids, C.byref(cnt)) != 0:
            return []
        return list(ids[: cnt.value])
    finally:
        os.close(fd)


def detach_by_id(prog_id: int, cgroup: str | None = None) -> bool:
    """Detach a sockops program left attached by a daemon that died (SIGKILL)."""
    from .libbpf import lib

    if prog_id not in attached_ids(cgroup):
        return False
    get = lib().bpf_prog_get_fd_by_id
    get.argtypes = [C.c_uint32]
    fd = get(prog_id)
    if fd < 0:
        return False
    cg = os.open(cgroup or cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        det = lib().bpf_prog_detach2
        det.argtypes = [C.c_int, C.c_int, C.c_int]
        return det(fd, cg, BPF_CGROUP_SOCK_OPS) == 0
    finally:
        os.close(cg)
        os.close(fd)
