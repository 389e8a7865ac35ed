"""Fixtures for lab-tier tests: a fresh netns lab per test, always torn down and checked gone.
Skips when not root, or fails instead with MPTCPCTL_REQUIRE_ALL=1 so CI cannot pass by
skipping."""

import contextlib
import json
import secrets
import subprocess

import pytest
from gates import missing_root_netns, skip_or_fail

from controller import lab as labmod


def require_root() -> None:
    """Skip (or fail, with MPTCPCTL_REQUIRE_ALL=1) unless lab tests can run."""
    skip_or_fail(missing_root_netns())


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
        # A test that failed before its `mptcpctl down` must not leave a daemon, pins or run
        # files behind: stop whatever runs in the lab's namespaces first.
        from controller import daemon

        for ns in labmod.get_lab(suffix).namespaces if labmod.get_lab(suffix) else []:
            with contextlib.suppress(Exception):
                daemon.stop_running(ns)
        labmod.lab_down(suffix)
        assert netns_with_suffix(suffix) == [], f"lab {suffix} left namespaces behind"
        assert host_links_with_suffix(suffix) == [], f"lab {suffix} left host interfaces"


def datapath_leftovers(lab) -> list[str]:
    """What of our datapath is on the lab client: its pins, XDP programs, clsact qdiscs and
    tc filters on the lab interfaces (the lab itself adds none of these)."""
    from controller import datapath

    def ns_json(argv):
        return json.loads(labmod.ns_exec(lab.client, argv, capture_output=True, text=True,
                                         check=True).stdout or "[]")

    pins = datapath.pin_dir(lab.client)
    left = [f"pins in {pins}"] if pins.exists() else []
    for p in lab.paths.values():
        dev = p.client_if
        if any("xdp" in link for link in ns_json(["ip", "-j", "link", "show", "dev", dev])):
            left.append(f"XDP on {dev}")
        if any(q["kind"] == "clsact" for q in ns_json(["tc", "-j", "qdisc", "show", "dev", dev])):
            left.append(f"clsact on {dev}")
        for hook in ("ingress", "egress"):
            if ns_json(["tc", "-j", "filter", "show", "dev", dev, hook]):
                left.append(f"tc {hook} filter on {dev}")
    return left


def assert_datapath_gone(lab) -> None:
    """No XDP program, clsact qdisc, tc filter or pin of ours left on the lab client."""
    assert datapath_leftovers(lab) == []


def add_server_address(lab, addr: str = "10.81.9.3") -> str:
    """A second address on the lab server (for ADD_ADDR scenarios)."""
    labmod.ns_exec(lab.server, ["ip", "addr", "add", f"{addr}/24", "dev", lab.server_if],
                   check=True)
    return addr
