"""Shared test fixtures: the gate for tests that need root and BCC (see gates.py)."""

import pytest
from gates import missing_root_bpf, skip_or_fail


def require_root_bpf() -> None:
    """Skip (or fail, with MPTCPCTL_REQUIRE_ALL=1) unless root and BCC are available."""
    skip_or_fail(missing_root_bpf())


@pytest.fixture(scope="session")
def root_bpf():
    """Depend on this fixture in tests that load BPF programs."""
    require_root_bpf()
