"""Shared test fixtures: the gate for tests that need root and BCC (skip, or fail when
MPTCPCTL_REQUIRE_ALL=1 so CI cannot pass by skipping)."""

import os

import pytest


def missing_root_bpf() -> str | None:
    """Why BPF tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (BPF programs)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC (python3-bpfcc) is not importable"
    return None


def require_root_bpf() -> None:
    """Skip (or fail, with MPTCPCTL_REQUIRE_ALL=1) unless root and BCC are available."""
    reason = missing_root_bpf()
    if reason:
        if os.environ.get("MPTCPCTL_REQUIRE_ALL") == "1":
            pytest.fail(f"MPTCPCTL_REQUIRE_ALL=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def root_bpf():
    """Depend on this fixture in tests that load BPF programs."""
    require_root_bpf()
