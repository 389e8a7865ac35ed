"""BCC compilation and loading in a short-lived child process: the child compiles a BPF file,
loads the programs asked for, hands every map and program to us as file descriptors
(SCM_RIGHTS) and exits, so a long-running controller never maps LLVM (see docs/controller.md)."""

import contextlib
import ctypes as C
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import libbpf
from .errors import DatapathError, MissingFeature

# Directory holding the `controller` package: the child runs `python -m controller.bpfload`
# from there, whatever the caller's working directory.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# How long a compile (plus the verifier) may take before the child is given up on.
TIMEOUT_S = 300.0
# One reply carries every fd of an object; the kernel takes at most 253 per message.
MAX_FDS = 250
MSG_MAX = 1 << 20
# BPF_MAP_TYPE_* whose values hold one slot per possible CPU.
PERCPU_MAP_TYPES = {5, 6, 10}


class BPF:
    """What callers took from bcc.BPF without a compiled object (program types, XDP flags,
    attach by interface name), without loading libbcc: a drop-in for `from bcc import BPF`
    where only these are used."""

    SOCKET_FILTER, KPROBE, SCHED_CLS, SCHED_ACT, TRACEPOINT, XDP = 1, 2, 3, 4, 5, 6
    PERF_EVENT, CGROUP_SKB, CGROUP_SOCK, LWT_IN, LWT_OUT, LWT_XMIT = 7, 8, 9, 10, 11, 12
    SOCK_OPS, SK_SKB, CGROUP_DEVICE, SK_MSG, RAW_TRACEPOINT, CGROUP_SOCK_ADDR = (
        13, 14, 15, 16, 17, 18)
    XDP_FLAGS_UPDATE_IF_NOEXIST, XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE = 1, 2, 4
    XDP_FLAGS_HW_MODE, XDP_FLAGS_REPLACE = 8, 16

    @staticmethod
    def attach_xdp(dev, fn, flags: int = 0) -> None:
        """Attach program `fn` (anything with .fd) to interface `dev` (name, str or bytes)."""
        libbpf.xdp_attach(_ifindex(dev), fn.fd, flags)

    @staticmethod
    def remove_xdp(dev, flags: int = 0) -> None:
        libbpf.xdp_detach(_ifindex(dev), flags)

    @staticmethod
    def attach_func(fn, attachable_fd: int, attach_type: int, flags: int = 0) -> None:
        libbpf.prog_attach(fn.fd, attachable_fd, attach_type, flags)

    @staticmethod
    def detach_func(fn, attachable_fd: int, attach_type: int) -> None:
        libbpf.prog_detach(fn.fd, attachable_fd, attach_type)


def _ifindex(dev) -> int:
    name = dev.decode() if isinstance(dev, bytes) else dev
    try:
        return socket.if_nametoindex(name)
    except OSError as e:
        raise DatapathError(f"no interface named {name!r}") from e


# --- what the parent holds -------------------------------------------------------------------


@dataclass
class Function:
    """A loaded program (what bcc's load_func returns, as far as we use it)."""

    name: bytes
    fd: int
    type: int
    id: int


class Map:
    """One of the object's maps by fd. Raw access here (ctypes keys and values of the map's
    sizes, as bcc's tables take them); typed access: .typed(key_type, value_type)."""

    def __init__(self, owner: "Loaded", name: bytes, fd: int, info: dict):
        self.owner, self.name, self.fd = owner, name, fd
        self.type, self.id = info["type"], info["id"]
        self.key_size, self.value_size = info["key_size"], info["value_size"]
        self.max_entries, self.flags = info["max_entries"], info["flags"]

    @property
    def map_fd(self) -> int:
        return self.fd

    def typed(self, key_type, value_type, percpu: bool | None = None) -> libbpf.PinnedMap:
        """A PinnedMap sharing this fd (do not close it: the object owns the fd)."""
        if percpu is None:
            percpu = self.type in PERCPU_MAP_TYPES
        return libbpf.PinnedMap(self.fd, key_type, value_type, percpu)

    def _check(self, key, leaf=None) -> None:
        if C.sizeof(key) != self.key_size:
            raise TypeError(f"{self.name.decode()}: key is {C.sizeof(key)} bytes, "
                            f"the map's are {self.key_size}")
        if leaf is not None and C.sizeof(leaf) != self.value_size:
            raise TypeError(f"{self.name.decode()}: value is {C.sizeof(leaf)} bytes, "
                            f"the map's are {self.value_size}")

    def __setitem__(self, key, leaf) -> None:
        self._check(key, leaf)
        libbpf._check(libbpf.lib().bpf_map_update_elem(self.fd, C.byref(key), C.byref(leaf), 0),
                      f"update of map {self.name.decode()}")

    def __getitem__(self, key) -> bytes:
        """The value's bytes (per-CPU maps: all CPUs' values, each padded to 8 bytes)."""
        self._check(key)
        size = self.value_size
        if self.type in PERCPU_MAP_TYPES:
            size = (size + 7) // 8 * 8 * libbpf._possible_cpus()
        buf = C.create_string_buffer(size)
        if libbpf.lib().bpf_map_lookup_elem(self.fd, C.byref(key), buf) < 0:
            raise KeyError(key)
        return buf.raw

    def __delitem__(self, key) -> None:
        self._check(key)
        if libbpf.lib().bpf_map_delete_elem(self.fd, C.byref(key)) < 0:
            raise KeyError(key)

    def open_ring_buffer(self, callback, ctx=None) -> None:
        """callback(ctx, data, size) per record, from the owner's ring_buffer_poll/consume."""
        self.owner.ring_buffers.add(self.fd, callback, ctx)


class Loaded:
    """A compiled BPF file as file descriptors: its maps (obj[b"name"]) and loaded programs
    (obj.load_func(name, type)); the subset of bcc.BPF our callers use. close() closes them
    (attached programs and pinned maps stay with the kernel).

    Made with `progs` (the usual case) the compiler is gone when load() returns. Without, the
    child stays to load programs on demand until release_compiler() or close()."""

    attach_xdp = staticmethod(BPF.attach_xdp)
    remove_xdp = staticmethod(BPF.remove_xdp)
    attach_func = staticmethod(BPF.attach_func)
    detach_func = staticmethod(BPF.detach_func)

    def __init__(self, source: Path, manifest: dict, fds: list[int], child=None):
        self.source = source
        self.maps: dict[bytes, Map] = {}
        self.funcs: dict[bytes, Function] = {}
        self.ring_buffers = libbpf.RingBuffer()
        self._child = child
        fds = list(fds)
        for m in manifest["maps"]:
            name = m["name"].encode()
            self.maps[name] = Map(self, name, fds.pop(0), m)
        for p in manifest["progs"]:
            self._add_func(p, fds.pop(0))

    def _add_func(self, p: dict, fd: int) -> Function:
        fn = Function(p["name"].encode(), fd, p["type"], p["id"])
        self.funcs[fn.name] = fn
        return fn

    def load_func(self, func_name, prog_type: int, device=None, attach_type: int = -1):
        name = func_name.encode() if isinstance(func_name, str) else bytes(func_name)
        fn = self.funcs.get(name)
        if fn is not None:
            if fn.type != prog_type:
                raise DatapathError(f"{name.decode()} was loaded as program type {fn.type}, "
                                    f"not {prog_type}")
            return fn
        if self._child is None:
            raise DatapathError(f"{name.decode()} ({self.source.name}) was not loaded: "
                                "name it in progs= when loading")
        reply, fds = self._child.ask({"load": name.decode(), "type": prog_type,
                                      "attach_type": attach_type}, self.source)
        return self._add_func(reply["prog"], fds[0])

    def __getitem__(self, name) -> Map:
        key = name.encode() if isinstance(name, str) else bytes(name)
        try:
            return self.maps[key]
        except KeyError:
            raise KeyError(f"{self.source.name} has no map {key.decode()!r}") from None

    get_table = __getitem__

    def __contains__(self, name) -> bool:
        return (name.encode() if isinstance(name, str) else bytes(name)) in self.maps

    def map_fd(self, name) -> int:
        return self[name].fd

    def ring_buffer_poll(self, timeout: int = -1) -> int:
        return self.ring_buffers.poll(timeout)

    def ring_buffer_consume(self) -> int:
        return self.ring_buffers.consume()

    def release_compiler(self) -> None:
        """Let the child (and LLVM with it) go; later load_func of a new program fails."""
        if self._child is not None:
            self._child.close()
            self._child = None

    def close(self) -> None:
        self.release_compiler()
        self.ring_buffers.close()
        for obj in (*self.maps.values(), *self.funcs.values()):
            if obj.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(obj.fd)
                obj.fd = -1

    cleanup = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # Like bcc's BPF: fds live until close(); only the child is not left behind.
        with contextlib.suppress(Exception):
            self.release_compiler()


def load(source, cflags: list[str] | None = None, progs: dict | None = None) -> Loaded:
    """Compile `source` with BCC in a child process and load the programs `progs` ({name:
    program type}); returns its maps and programs as fds once the child has exited.
    progs=None keeps the child for load_func on demand (see Loaded). Compile and verifier
    errors raise DatapathError with one line saying why."""
    source = Path(source).resolve()
    child = _Child(source)
    try:
        reply, fds = child.ask({"source": str(source), "cflags": list(cflags or []),
                                "progs": dict(progs or {}), "serve": progs is None}, source)
        obj = Loaded(source, reply, fds, child if progs is None else None)
    except BaseException:
        child.close()
        raise
    if progs is not None:
        child.close()
    return obj


class _Child:
    """The compiler process and our end of its socket."""

    def __init__(self, source: Path):
        self.debug = bool(os.environ.get("MPTCPCTL_DEBUG"))
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(TIMEOUT_S)
        # The compiler's and verifier's output goes to a file we read error lines from.
        self.log = None if self.debug else tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.bpfload", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], cwd=PACKAGE_ROOT, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=self.log)
        except OSError as e:
            self.sock.close()
            raise DatapathError(f"starting the BPF loader ({sys.executable}) failed: {e}") from e
        finally:
            theirs.close()

    def ask(self, request: dict, source: Path) -> tuple[dict, list[int]]:
        log_at = self.log.tell() if self.log else 0
        try:
            self.sock.sendall(json.dumps(request).encode())
            msg, fds, flags, _ = socket.recv_fds(self.sock, MSG_MAX, MAX_FDS)
        except TimeoutError:
            raise DatapathError(f"compiling {source.name}: the BPF loader did not answer in "
                                f"{TIMEOUT_S:.0f} s") from None
        except OSError as e:
            raise DatapathError(f"talking to the BPF loader failed: {e}") from e
        if flags & socket.MSG_CTRUNC:
            _close_all(fds)
            raise DatapathError(f"{source.name}: more than {MAX_FDS} maps and programs")
        if not msg:
            _close_all(fds)
            rc = self._wait()
            raise DatapathError(f"compiling {source.name}: the BPF loader exited (status {rc})"
                                + _detail(self._log_since(log_at), "last"))
        reply = json.loads(msg)
        if reply.get("ok"):
            return reply, fds
        _close_all(fds)
        log = self._log_since(log_at)
        if reply["kind"] == "missing":
            raise MissingFeature(reply["error"])
        if reply["kind"] == "compile":
            raise DatapathError(f"compiling {source.name} failed: "
                                + (_compiler_error(log, source.name) or reply["error"]))
        error = re.sub(r"^Failed to load BPF program b?'?[\w.]*'?: ", "", reply["error"])
        raise DatapathError(f"loading {reply.get('prog', '?')} from {source.name} failed: "
                            f"{error}" + _detail(log, "verifier"))

    def _log_since(self, pos: int) -> str:
        if self.log is None:
            return ""
        self.log.seek(pos)
        text = self.log.read().decode(errors="replace")
        self.log.seek(0, os.SEEK_END)
        return text

    def _wait(self) -> int:
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def close(self) -> None:
        """Our end closes; the child sees end of file and exits."""
        if self.sock.fileno() >= 0:
            self.sock.close()
            self._wait()
        if self.log is not None:
            self.log.close()
            self.log = None


def _close_all(fds) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# Verifier-log lines that are statistics, not the reason.
_NOT_A_REASON = re.compile(r"^(processed \d+ insns|verification time|stack depth|"
                           r"bpf: Failed to load program|Exception ignored|Traceback)")


def _compiler_error(log: str, name: str) -> str | None:
    """clang's first `error:` line, paths cut to file names (BCC calls the main file
    /virtual/main.c)."""
    for line in log.splitlines():
        if "error: " in line:
            line = line.strip().replace("/virtual/main.c:", f"{name}:", 1)
            return re.sub(r"^[^\s:]*/", "", line)[:300]
    return None


def _detail(log: str, what: str) -> str:
    """' (the last line that gives a reason)' from the child's output, or ''."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    reasons = [ln for ln in lines if not _NOT_A_REASON.match(ln)]
    if not reasons:
        return ""
    return f" ({what}: {reasons[-1][:300]})"


# --- the child -------------------------------------------------------------------------------


def _child_main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    req = json.loads(sock.recv(MSG_MAX) or b"{}")
    if not req:
        return
    try:
        from bcc import BPF as BccBPF
    except ImportError as e:
        _reply(sock, {"ok": False, "kind": "missing", "error":
                      f"BCC is not importable ({e}): install python3-bpfcc and use a venv "
                      "with --system-site-packages (make deps)"})
        return
    try:
        bpf = BccBPF(src_file=req["source"].encode(),
                     cflags=list(req["cflags"]))
    except Exception as e:  # BCC raises bare Exception for compile errors
        _reply(sock, {"ok": False, "kind": "compile", "error": str(e)})
        return
    maps, fds = _maps_of(bpf)
    progs = []
    for name, prog_type in req["progs"].items():
        try:
            fn = bpf.load_func(name.encode(), prog_type)
        except Exception as e:  # and for verifier errors
            _reply(sock, {"ok": False, "kind": "load", "prog": name, "error": str(e)})
            return
        progs.append(_prog_entry(name, prog_type, fn.fd))
        fds.append(fn.fd)
    _reply(sock, {"ok": True, "maps": maps, "progs": progs}, fds)
    while req.get("serve"):
        msg = sock.recv(MSG_MAX)
        if not msg:
            return
        ask = json.loads(msg)
        try:
            fn = bpf.load_func(ask["load"].encode(), ask["type"],
                               attach_type=ask.get("attach_type", -1))
        except Exception as e:
            _reply(sock, {"ok": False, "kind": "load", "prog": ask["load"], "error": str(e)})
            continue
        _reply(sock, {"ok": True, "prog": _prog_entry(ask["load"], ask["type"], fn.fd)},
               [fn.fd])


def _maps_of(bpf) -> tuple[list[dict], list[int]]:
    from bcc.libbcc import lib

    lib.bpf_num_tables.restype = C.c_size_t
    lib.bpf_num_tables.argtypes = [C.c_void_p]
    lib.bpf_table_name.restype = C.c_char_p
    lib.bpf_table_name.argtypes = [C.c_void_p, C.c_size_t]
    lib.bpf_table_fd_id.restype = C.c_int
    lib.bpf_table_fd_id.argtypes = [C.c_void_p, C.c_size_t]
    maps, fds = [], []
    for i in range(lib.bpf_num_tables(bpf.module)):
        fd = lib.bpf_table_fd_id(bpf.module, i)
        if fd < 0:
            continue
        info = libbpf.obj_info(fd, libbpf.MapInfo)
        maps.append({"name": lib.bpf_table_name(bpf.module, i).decode(), "type": info.type,
                     "id": info.id, "key_size": info.key_size, "value_size": info.value_size,
                     "max_entries": info.max_entries, "flags": info.map_flags})
        fds.append(fd)
    return maps, fds


def _prog_entry(name: str, prog_type: int, fd: int) -> dict:
    return {"name": name, "type": prog_type, "id": libbpf.obj_info(fd, libbpf.ProgInfo).id}


def _reply(sock, msg: dict, fds: list[int] = ()) -> None:
    if len(fds) > MAX_FDS:
        msg, fds = {"ok": False, "kind": "load", "error": f"more than {MAX_FDS} maps and "
                    "programs in one object"}, []
    socket.send_fds(sock, [json.dumps(msg).encode()], list(fds))


if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
