"""Each BPF header and its Python mirror describe the same ABI: every constant has the same
value, every struct the same size and field offsets (checked by compiling the header).
bpf/include/abi.h ↔ controller/abi.py (datapath), bpf/include/lb_abi.h ↔ controller/lb_abi.py
(load balancer), bpf/include/coupled.h ↔ controller/coupling.py (coupled congestion control)."""

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from gates import skip_or_fail

from controller import abi, coupling, lb_abi

INCLUDE = Path(__file__).resolve().parents[2] / "bpf" / "include"
MIRRORS = {"abi.h": abi, "lb_abi.h": lb_abi, "coupled.h": coupling}
STRUCT_CASES = [(h, c) for h, m in MIRRORS.items() for c in m.STRUCTS]


def c_constants(header: str) -> dict[str, int]:
    text = re.sub(r"/\*.*?\*/", "", (INCLUDE / header).read_text(), flags=re.S)
    out = {}
    for name, value in re.findall(r"^#define\s+(\w+)\s+(\d+|0x[0-9a-fA-F]+)\s*$", text, re.M):
        out[name] = int(value, 0)
    for body in re.findall(r"enum\s+\w+\s*\{(.*?)\}", text, re.S):
        for name, expr in re.findall(r"(\w+)\s*=\s*([^,]+),", body):
            out[name] = eval(expr, {}, dict(out))  # shifts and small integers only
    return out


@pytest.mark.parametrize("header", list(MIRRORS))
def test_every_constant_in_the_header_is_mirrored_with_the_same_value(header):
    mirror = MIRRORS[header].CONSTANTS
    c = c_constants(header)
    assert set(c) == set(mirror), set(c) ^ set(mirror)
    for name, value in c.items():
        assert mirror[name] == value, name


def _layout_program() -> str:
    # coupled.h also holds the BPF-side arithmetic: plain inline functions to a host compiler.
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>",
             "#define __always_inline inline"]
    lines += [f'#include "{INCLUDE / h}"' for h in MIRRORS]
    lines.append("int main(void) {")
    for _header, cname in STRUCT_CASES:
        structs = next(m.STRUCTS for m in MIRRORS.values() if cname in m.STRUCTS)
        lines.append(f'printf("{cname} %zu\\n", sizeof(struct {cname}));')
        for fname, *_ in structs[cname]._fields_:
            lines.append(
                f'printf("{cname}.{fname} %zu\\n", offsetof(struct {cname}, {fname}));')
    lines += ["return 0; }"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        skip_or_fail("no C compiler to lay out the BPF headers")
    d = tmp_path_factory.mktemp("abi")
    (d / "layout.c").write_text(_layout_program())
    subprocess.run([cc, "-o", str(d / "layout"), str(d / "layout.c")], check=True)
    out = subprocess.run([str(d / "layout")], check=True, capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines())


@pytest.mark.parametrize("header,cname", STRUCT_CASES)
def test_struct_size_and_offsets_match_the_header(c_layout, header, cname):
    py = MIRRORS[header].STRUCTS[cname]
    assert int(c_layout[cname]) == ctypes.sizeof(py), f"sizeof(struct {cname})"
    for fname, *_ in py._fields_:
        assert int(c_layout[f"{cname}.{fname}"]) == getattr(py, fname).offset, f"{cname}.{fname}"


@pytest.mark.parametrize("header,cname", STRUCT_CASES)
def test_shared_structs_are_padded_to_8_bytes(header, cname):
    assert ctypes.sizeof(MIRRORS[header].STRUCTS[cname]) % 8 == 0, cname
