"""Fixtures for lab-tier tests: a fresh netns lab per test, always torn down and checked gone.
Skips when not root, or fails instead with MPTCPCTL_REQUIRE_ALL=1 so CI cannot pass by
skipping."""

import os
import secrets
import shutil
import subprocess

import pytest

from controller import lab as labmod


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


def require_root() -> None:
    """Skip (or fail, with MPTCPCTL_REQUIRE_ALL=1) unless lab tests can run."""
    reason = missing_root_netns()
    if reason:
        if os.environ.get("MPTCPCTL_REQUIRE_ALL") == "1":
            pytest.fail(f"MPTCPCTL_REQUIRE_ALL=1 but {reason}")
        pytest.skip(reason)


def unique_suffix() -> str:
    """A suffix no other lab (or concurrent test run) uses: 't' + 8 hex chars."""
    return "t" + secrets.token_hex(4)


def netns_with_suffix(suffix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.strip() and suffix in ln.split()[0]]


def host_links_with_suffix(suffix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if suffix in ln]


@pytest.fixture
def lab():
    """A freshly built lab (default rates, MPTCP endpoints); removed after the test, even on
    failure, and then checked gone."""
    require_root()
    suffix = unique_suffix()
    try:
        yield labmod.lab_up(suffix)
    finally:
        labmod.lab_down(suffix)
        assert netns_with_suffix(suffix) == [], f"lab {suffix} left namespaces behind"
        assert host_links_with_suffix(suffix) == [], f"lab {suffix} left host interfaces"
