"""Why a test tier cannot run here, and the one rule for that: skip with the reason, or fail
when MPTCPCTL_REQUIRE_ALL=1 (set by .ci/run) so CI cannot pass by skipping."""

import os
import shutil

import pytest


def skip_or_fail(reason: str | None) -> None:
    if reason:
        if os.environ.get("MPTCPCTL_REQUIRE_ALL") == "1":
            pytest.fail(f"MPTCPCTL_REQUIRE_ALL=1 but {reason}")
        pytest.skip(reason)


def missing_root_bpf() -> str | None:
    """Why BPF tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (BPF programs)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC (python3-bpfcc) is not importable"
    return None


def missing_root_netns() -> str | None:
    """Why lab tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "tc", "ethtool", "ss"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if not os.path.exists("/proc/sys/net/mptcp/enabled"):
        return "kernel without MPTCP"
    return None
