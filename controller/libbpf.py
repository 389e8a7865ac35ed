"""Thin ctypes bindings to libbpf.so.1 for what BCC 0.26 lacks from Python: program test runs,
pinning and opening pinned objects, and reading maps by file descriptor."""

import ctypes as C
import ctypes.util
import errno
import os

from .errors import DatapathError, MissingFeature


class TestRunOpts(C.Structure):
    """struct bpf_test_run_opts (libbpf >= 0.7)."""

    _fields_ = [
        ("sz", C.c_size_t),
        ("data_in", C.c_void_p),
        ("data_out", C.c_void_p),
        ("data_size_in", C.c_uint32),
        ("data_size_out", C.c_uint32),
        ("ctx_in", C.c_void_p),
        ("ctx_out", C.c_void_p),
        ("ctx_size_in", C.c_uint32),
        ("ctx_size_out", C.c_uint32),
        ("retval", C.c_uint32),
        ("repeat", C.c_int),
        ("duration", C.c_uint32),
        ("flags", C.c_uint32),
        ("cpu", C.c_uint32),
        ("batch_size", C.c_uint32),
    ]


_lib = None


def lib():
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            _lib = C.CDLL(name, use_errno=True)
        except OSError as e:
            raise MissingFeature(f"libbpf not found ({name}): install libbpf1") from e
        _lib.bpf_prog_test_run_opts.argtypes = [C.c_int, C.POINTER(TestRunOpts)]
        _lib.bpf_obj_pin.argtypes = [C.c_int, C.c_char_p]
        _lib.bpf_obj_get.argtypes = [C.c_char_p]
        _lib.bpf_map_lookup_elem.argtypes = [C.c_int, C.c_void_p, C.c_void_p]
        _lib.bpf_map_update_elem.argtypes = [C.c_int, C.c_void_p, C.c_void_p, C.c_uint64]
        _lib.bpf_map_delete_elem.argtypes = [C.c_int, C.c_void_p]
        _lib.bpf_map_get_next_key.argtypes = [C.c_int, C.c_void_p, C.c_void_p]
    return _lib


def _check(rc, what):
    if rc < 0:
        err = C.get_errno() or -rc
        raise DatapathError(f"{what}: {os.strerror(err)}")
    return rc


def test_run(prog_fd: int, data: bytes, repeat: int = 1, out_size: int = 0):
    """Run a program once (or `repeat` times) on `data`; returns (retval, ns per run, out)."""
    buf = C.create_string_buffer(bytes(data), len(data))
    out = C.create_string_buffer(out_size) if out_size else None
    opts = TestRunOpts(
        sz=C.sizeof(TestRunOpts),
        data_in=C.cast(buf, C.c_void_p),
        data_size_in=len(data),
        data_out=C.cast(out, C.c_void_p) if out else None,
        data_size_out=out_size,
        repeat=repeat,
    )
    _check(lib().bpf_prog_test_run_opts(prog_fd, C.byref(opts)), "BPF test run")
    return opts.retval, opts.duration, out.raw[: opts.data_size_out] if out else b""


def pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


def open_pinned(path: str) -> int:
    fd = lib().bpf_obj_get(path.encode())
    if fd < 0:
        err = C.get_errno()
        if err == errno.ENOENT:
            raise FileNotFoundError(path)
        _check(fd, f"open {path}")
    return fd


class PinnedMap:
    """A map opened by fd (usually from a pin), read and written with ctypes structs.

    `percpu` maps return one value per possible CPU from lookups."""

    def __init__(self, fd: int, key_type, value_type, percpu: bool = False):
        self.fd, self.key_type, self.value_type, self.percpu = fd, key_type, value_type, percpu
        self.ncpus = os.cpu_count() if not percpu else _possible_cpus()

    @classmethod
    def open(cls, path: str, key_type, value_type, percpu: bool = False):
        return cls(open_pinned(path), key_type, value_type, percpu)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _value_buf(self):
        if self.percpu:
            return (self.value_type * self.ncpus)()
        return self.value_type()

    def lookup(self, key):
        val = self._value_buf()
        if lib().bpf_map_lookup_elem(self.fd, C.byref(key), C.byref(val)) < 0:
            return None
        return list(val) if self.percpu else val

    def update(self, key, value, flags: int = 0):
        rc = lib().bpf_map_update_elem(self.fd, C.byref(key), C.byref(value), flags)
        _check(rc, "map update")

    def delete(self, key):
        lib().bpf_map_delete_elem(self.fd, C.byref(key))

    def keys(self):
        out, cur, nxt = [], None, self.key_type()
        while True:
            prev = C.byref(cur) if cur is not None else None
            if lib().bpf_map_get_next_key(self.fd, prev, C.byref(nxt)) != 0:
                break
            out.append(nxt)
            cur, nxt = nxt, self.key_type()
        return out

    def items(self):
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v


def _possible_cpus() -> int:
    """Number of possible CPUs, the stride of per-CPU map values."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            spec = f.read().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n
