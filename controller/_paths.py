"""Where the files mptcpctl ships live: the BPF C sources (bpf/ next to the package in a source
tree or an editable install; <prefix>/share/mptcpctl/bpf after `pip install .`, from the wheel's
data files) and controller/data/ (the systemd unit, the example config)."""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path

# Relative to an installation prefix: where pyproject's data-files put bpf/.
SHARE_BPF = Path("share") / "mptcpctl" / "bpf"
# The file whose presence says "this is the BPF directory".
MARKER = "mptcp_datapath.c"
SOURCE_TREE_BPF = Path(__file__).resolve().parent.parent / "bpf"
DATA_DIR = Path(__file__).resolve().parent / "data"


def bpf_candidates() -> list[Path]:
    """Every place bpf/ may be, in the order they are tried."""
    prefixes = [sysconfig.get_path("data"), sys.prefix, sys.base_prefix,
                getattr(site, "USER_BASE", None), "/usr/local", "/usr"]
    out = [SOURCE_TREE_BPF]
    for prefix in prefixes:
        if prefix and (p := Path(prefix) / SHARE_BPF) not in out:
            out.append(p)
    return out


def bpf_dir() -> Path:
    """The directory holding mptcp_datapath.c, mptcp_sockops.c and include/. When none is
    found, the source-tree path (so a later error names a real place to look)."""
    for d in bpf_candidates():
        if (d / MARKER).is_file():
            return d
    return SOURCE_TREE_BPF


def data_file(name: str) -> Path:
    """A file of controller/data/ (package data: present in every kind of install)."""
    return DATA_DIR / name
