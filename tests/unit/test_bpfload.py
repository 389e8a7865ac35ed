"""BPF objects compiled in a child process (controller/bpfload.py): errors arrive as one line,
maps and programs outlive the child, and the loading process never maps LLVM."""

import ctypes
import os
import subprocess
import sys

import pytest

from controller import libbpf
from controller.bpfload import BPF
from controller.datapath import compile_bpf
from controller.errors import DatapathError

GOOD = r"""
#include <uapi/linux/bpf.h>
/* key 0: times count ran */
BPF_ARRAY(hits, u64, 1);

int count(struct xdp_md *ctx) {
    int k = 0;
    u64 *v = hits.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return XDP_PASS;
}

int drop(struct xdp_md *ctx) {
    return XDP_DROP;
}

/* reads the packet without checking its length: the verifier refuses it */
int unchecked(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    return *(unsigned int *)data;
}
"""
FRAME = bytes(64)
XDP_DROP, XDP_PASS = 1, 2


@pytest.fixture
def source(tmp_path, root_bpf):
    path = tmp_path / "tiny.c"
    path.write_text(GOOD)
    return path


def hits(obj) -> int:
    return obj[b"hits"].typed(ctypes.c_uint32, ctypes.c_uint64).lookup(ctypes.c_uint32(0)).value


def test_a_compile_error_is_one_line_naming_the_file_and_the_error(tmp_path, root_bpf):
    bad = tmp_path / "broken.c"
    bad.write_text("int f(struct xdp_md *ctx) { return undeclared_thing; }\n")
    with pytest.raises(DatapathError) as e:
        compile_bpf(bad, progs={"f": BPF.XDP})
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("compiling broken.c failed: broken.c:1:")
    assert "undeclared_thing" in msg


def test_a_verifier_refusal_is_one_line_naming_the_program(source):
    with pytest.raises(DatapathError) as e:
        compile_bpf(source, progs={"count": BPF.XDP, "unchecked": BPF.XDP})
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("loading unchecked from tiny.c failed: Permission denied")
    assert "(verifier: " in msg


def test_maps_and_programs_outlive_the_child(source):
    obj = compile_bpf(source, progs={"count": BPF.XDP})
    try:
        fn = obj.load_func(b"count", BPF.XDP)
        assert fn.id > 0 and obj[b"hits"].max_entries == 1
        assert libbpf.test_run(fn.fd, FRAME, repeat=3)[0] == XDP_PASS
        assert hits(obj) == 3
    finally:
        obj.close()
    assert fn.fd == -1


def test_loading_twice_gives_two_independent_objects(source):
    a = compile_bpf(source, progs={"count": BPF.XDP})
    b = compile_bpf(source, progs={"count": BPF.XDP})
    try:
        assert a[b"hits"].id != b[b"hits"].id
        libbpf.test_run(a.load_func("count", BPF.XDP).fd, FRAME, repeat=2)
        assert (hits(a), hits(b)) == (2, 0)
    finally:
        a.close()
        b.close()


def test_a_program_not_named_at_load_cannot_be_had_later(source):
    obj = compile_bpf(source, progs={"count": BPF.XDP})
    try:
        with pytest.raises(DatapathError, match="drop .* was not loaded"):
            obj.load_func(b"drop", BPF.XDP)
        with pytest.raises(DatapathError, match="program type 6, not 3"):
            obj.load_func(b"count", BPF.SCHED_CLS)
    finally:
        obj.close()


def test_without_progs_the_child_loads_on_demand_until_released(source):
    obj = compile_bpf(source)
    try:
        child = obj._child.proc
        drop = obj.load_func(b"drop", BPF.XDP)
        assert libbpf.test_run(drop.fd, FRAME)[0] == XDP_DROP
        assert obj.load_func(b"drop", BPF.XDP) is drop
        with pytest.raises(DatapathError, match="loading unchecked from tiny.c failed"):
            obj.load_func(b"unchecked", BPF.XDP)
        obj.release_compiler()
        assert child.poll() is not None
        with pytest.raises(DatapathError, match="was not loaded"):
            obj.load_func(b"count", BPF.XDP)
        assert libbpf.test_run(drop.fd, FRAME)[0] == XDP_DROP
    finally:
        obj.close()


def test_prog_array_slots_filled_by_fd_hold_after_the_child_exits(root_bpf):
    from controller.datapath import DSS_CSUM_PROG, Program

    p = Program()
    try:
        slot = p.bpf[b"dss_csum_progs"][ctypes.c_int(DSS_CSUM_PROG)]
        assert int.from_bytes(slot, "little") == p.dss_csum.id
    finally:
        p.close()


def test_the_loading_process_never_maps_llvm(root_bpf):
    """The point of the child: a daemon that loads the datapath stays small."""
    code = ("from controller.datapath import Program\n"
            "p = Program()\n"
            "maps = open('/proc/self/maps').read()\n"
            "print('libLLVM' in maps or 'libbcc' in maps)\n"
            "p.close()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(libbpf.__file__)))
    assert out.stdout.strip() == "False"
