"""bpf/include/lb_abi.h and controller/lb_abi.py describe the same load-balancer ABI: every
constant has the same value, every struct the same size and field offsets (checked by compiling
the header)."""

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from controller import lb_abi

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "include" / "lb_abi.h"


def c_constants() -> dict[str, int]:
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = {}
    for name, value in re.findall(r"^#define\s+(\w+)\s+(\d+|0x[0-9a-fA-F]+)\s*$", text, re.M):
        out[name] = int(value, 0)
    for body in re.findall(r"enum\s+\w+\s*\{(.*?)\}", text, re.S):
        for name, expr in re.findall(r"(\w+)\s*=\s*([^,]+),", body):
            out[name] = eval(expr, {}, dict(out))  # shifts and small integers only
    return out


def test_every_constant_in_the_header_is_mirrored_with_the_same_value():
    c = c_constants()
    assert set(c) == set(lb_abi.CONSTANTS), (set(c) ^ set(lb_abi.CONSTANTS))
    for name, value in c.items():
        assert lb_abi.CONSTANTS[name] == value, name


def _layout_program() -> str:
    lines = [
        "#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>",
        f'#include "{HEADER}"', "int main(void) {",
    ]
    for cname in lb_abi.STRUCTS:
        lines.append(f'printf("{cname} %zu\\n", sizeof(struct {cname}));')
        for fname, *_ in lb_abi.STRUCTS[cname]._fields_:
            lines.append(
                f'printf("{cname}.{fname} %zu\\n", offsetof(struct {cname}, {fname}));'
            )
    lines += ["return 0; }"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to lay out lb_abi.h")
    d = tmp_path_factory.mktemp("lb_abi")
    (d / "layout.c").write_text(_layout_program())
    subprocess.run([cc, "-o", str(d / "layout"), str(d / "layout.c")], check=True)
    out = subprocess.run([str(d / "layout")], check=True, capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines())


@pytest.mark.parametrize("cname", list(lb_abi.STRUCTS))
def test_struct_size_and_offsets_match_the_header(c_layout, cname):
    py = lb_abi.STRUCTS[cname]
    assert int(c_layout[cname]) == ctypes.sizeof(py), f"sizeof(struct {cname})"
    for fname, *_ in py._fields_:
        assert int(c_layout[f"{cname}.{fname}"]) == getattr(py, fname).offset, f"{cname}.{fname}"


def test_shared_structs_are_padded_to_8_bytes():
    for cname, py in lb_abi.STRUCTS.items():
        assert ctypes.sizeof(py) % 8 == 0, cname
