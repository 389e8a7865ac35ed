"""Thin ctypes bindings to libbpf.so.1: program test runs, pinning and opening pinned objects,
reading maps by file descriptor, object info, cgroup and XDP attach, ring buffers. Everything a
process does with BPF objects it did not compile itself (see controller/bpfload.py)."""

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


# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
RingBufferSampleFn = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_void_p, C.c_size_t)

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
        _lib.bpf_obj_get_info_by_fd.argtypes = [C.c_int, C.c_void_p, C.POINTER(C.c_uint32)]
        _lib.bpf_prog_attach.argtypes = [C.c_int, C.c_int, C.c_int, C.c_uint]
        _lib.bpf_prog_detach2.argtypes = [C.c_int, C.c_int, C.c_int]
        _lib.bpf_xdp_attach.argtypes = [C.c_int, C.c_int, C.c_uint32, C.c_void_p]
        _lib.bpf_xdp_detach.argtypes = [C.c_int, C.c_uint32, C.c_void_p]
        _lib.ring_buffer__new.argtypes = [C.c_int, RingBufferSampleFn, C.c_void_p, C.c_void_p]
        _lib.ring_buffer__new.restype = C.c_void_p
        _lib.ring_buffer__add.argtypes = [C.c_void_p, C.c_int, RingBufferSampleFn, C.c_void_p]
        _lib.ring_buffer__poll.argtypes = [C.c_void_p, C.c_int]
        _lib.ring_buffer__consume.argtypes = [C.c_void_p]
        _lib.ring_buffer__free.argtypes = [C.c_void_p]
        _lib.ring_buffer__epoll_fd.argtypes = [C.c_void_p]
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
        # A Python mirror that disagrees with the map would read past its buffer: refuse it.
        info = obj_info(fd, MapInfo)
        if (info.key_size, info.value_size) != (C.sizeof(key_type), C.sizeof(value_type)):
            raise ValueError(
                f"map {info.name.decode(errors='replace')!r}: key/value are "
                f"{info.key_size}/{info.value_size} bytes, the Python mirror "
                f"{key_type.__name__}/{value_type.__name__} is "
                f"{C.sizeof(key_type)}/{C.sizeof(value_type)}")
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


# --- object info ---------------------------------------------------------------------------


class MapInfo(C.Structure):
    """The head of struct bpf_map_info (the kernel fills what fits)."""

    _fields_ = [("type", C.c_uint32), ("id", C.c_uint32), ("key_size", C.c_uint32),
                ("value_size", C.c_uint32), ("max_entries", C.c_uint32),
                ("map_flags", C.c_uint32), ("name", C.c_char * 16)]


class ProgInfo(C.Structure):
    """The head of struct bpf_prog_info."""

    _fields_ = [("type", C.c_uint32), ("id", C.c_uint32), ("tag", C.c_uint8 * 8)]


def obj_info(fd: int, info_type):
    """struct bpf_map_info / bpf_prog_info (MapInfo, ProgInfo) of the object behind `fd`."""
    info = info_type()
    n = C.c_uint32(C.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, C.byref(info), C.byref(n)), "BPF object info")
    return info


# --- attach ----------------------------------------------------------------------------------


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> None:
    """Attach a program to a cgroup (or another fd target): BPF_PROG_ATTACH."""
    _check(lib().bpf_prog_attach(prog_fd, target_fd, attach_type, flags), "BPF attach")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    _check(lib().bpf_prog_detach2(prog_fd, target_fd, attach_type), "BPF detach")


def xdp_attach(ifindex: int, prog_fd: int, flags: int = 0) -> None:
    """Attach an XDP program to an interface (flags: XDP_FLAGS_*; 0 lets the kernel pick)."""
    _check(lib().bpf_xdp_attach(ifindex, prog_fd, flags, None), "XDP attach")


def xdp_detach(ifindex: int, flags: int = 0) -> None:
    _check(lib().bpf_xdp_detach(ifindex, flags, None), "XDP detach")


# --- ring buffers ----------------------------------------------------------------------------


class RingBuffer:
    """libbpf's ring_buffer over one or more BPF_MAP_TYPE_RINGBUF maps; callback(ctx, data,
    size) runs for each record from poll()/consume() (data: the record's address)."""

    def __init__(self):
        self._rb = None
        self._cbs = []   # the C callbacks must outlive the ring buffer

    def add(self, map_fd: int, callback, ctx=None) -> None:
        def sample(c, data, size):
            ret = callback(c, data, size)
            try:
                return int(ret or 0)
            except (TypeError, ValueError):
                return 0

        fn = RingBufferSampleFn(sample)
        if self._rb is None:
            self._rb = lib().ring_buffer__new(map_fd, fn, ctx, None)
            if not self._rb:
                raise DatapathError(f"opening a ring buffer: {os.strerror(C.get_errno())}")
        else:
            _check(lib().ring_buffer__add(self._rb, map_fd, fn, ctx), "adding a ring buffer")
        self._cbs.append(fn)

    def poll(self, timeout_ms: int = -1) -> int:
        if self._rb is None:
            raise DatapathError("no ring buffer is open")
        return lib().ring_buffer__poll(self._rb, timeout_ms)

    def consume(self) -> int:
        if self._rb is None:
            raise DatapathError("no ring buffer is open")
        return lib().ring_buffer__consume(self._rb)

    def epoll_fd(self) -> int:
        """An fd that polls readable when a record is there (for selectors)."""
        if self._rb is None:
            raise DatapathError("no ring buffer is open")
        return lib().ring_buffer__epoll_fd(self._rb)

    def close(self) -> None:
        if self._rb is not None:
            lib().ring_buffer__free(self._rb)
            self._rb = None
        self._cbs.clear()
