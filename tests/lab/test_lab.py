"""The netns lab as users see it: `lab up`/`lab down` leave nothing behind, a transfer over it
really uses both paths, and the CLI refuses duplicates with a one-line error."""

import pytest
from click.testing import CliRunner

from cli.main import cli
from controller import lab as labmod
from controller.transfer import run_transfer

from .conftest import host_links_with_suffix, netns_with_suffix, require_root, unique_suffix

NBYTES = 6_000_000  # ~2 s at the default 20+10 Mbit/s


def test_lab_up_then_down_leaves_no_namespace_or_host_interface():
    require_root()
    suffix = unique_suffix()
    try:
        lab = labmod.lab_up(suffix)
        assert sorted(netns_with_suffix(suffix)) == sorted(lab.namespaces)
        assert host_links_with_suffix(suffix) == []  # veths were born inside the namespaces
        assert labmod.list_labs().count(suffix) == 1
        described = labmod.get_lab(suffix)
        assert described == lab  # naming scheme + tbf rates read back from the router
    finally:
        assert labmod.lab_down(suffix) is True
    assert netns_with_suffix(suffix) == []
    assert host_links_with_suffix(suffix) == []
    assert labmod.get_lab(suffix) is None
    assert labmod.lab_down(suffix) is False


def test_a_failed_lab_up_removes_what_it_built(monkeypatch):
    require_root()
    suffix = unique_suffix()
    real = labmod._build_steps

    def failing(*args, **kwargs):
        return [*real(*args, **kwargs), ["ip", "link", "set", "nosuch-if-x", "up"]]

    monkeypatch.setattr(labmod, "_build_steps", failing)
    with pytest.raises(labmod.LabError, match="nosuch-if-x"):
        labmod.lab_up(suffix)
    assert netns_with_suffix(suffix) == []
    assert host_links_with_suffix(suffix) == []


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_mptcp_transfer_uses_both_paths_and_arrives_intact(lab, ipv6):
    client, server = run_transfer(lab, NBYTES, timeout=30, ipv6=ipv6)
    assert client["bytes"] == server["bytes"] == NBYTES
    assert client["sha256"] == server["sha256"]
    # subflows as `ss -tni` in the client netns showed them when the last byte was queued
    by_local = {sf["local"].rsplit(":", 1)[0].strip("[]"): sf for sf in client["subflows"]}
    key = "client_addr6" if ipv6 else "client_addr"
    wifi, lte = getattr(lab.paths["wifi"], key), getattr(lab.paths["lte"], key)
    assert set(by_local) == {wifi, lte}, client["subflows"]
    for addr in (wifi, lte):
        assert by_local[addr]["bytes_sent"] > 0, by_local[addr]


def test_lab_up_twice_is_a_one_line_error_and_no_second_copy(lab):
    before = netns_with_suffix(lab.suffix)
    result = CliRunner().invoke(cli, ["lab", "up", "--name", lab.suffix])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lab.suffix in lines[0] and "exists" in lines[0], result.output
    assert netns_with_suffix(lab.suffix) == before


def test_lab_down_of_an_unknown_lab_is_an_error_naming_it():
    require_root()
    suffix = unique_suffix()
    result = CliRunner().invoke(cli, ["lab", "down", "--name", suffix])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and suffix in lines[0], result.output


def test_cli_lab_up_prints_namespaces_and_addresses_and_down_removes_it():
    require_root()
    suffix = unique_suffix()
    try:
        result = CliRunner().invoke(cli, ["lab", "up", "--name", suffix, "--lte-mbit", "5"])
        assert result.exit_code == 0, result.output
        for text in (f"mptcp-c-{suffix}", f"mptcp-s-{suffix}", "10.81.1.2", "10.81.2.2",
                     "10.81.9.2", "fd81:9::2", "5mbit"):
            assert text in result.output
    finally:
        down = CliRunner().invoke(cli, ["lab", "down", "--name", suffix])
    assert down.exit_code == 0, down.output
    assert netns_with_suffix(suffix) == []


def test_lab_commands_as_non_root_are_a_one_line_error(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for argv in (["lab", "up", "--name", "nobody1"], ["lab", "down", "--all"]):
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "root" in lines[0], result.output
    assert netns_with_suffix("nobody1") == []


def test_lab_down_removes_a_half_built_lab():
    require_root()
    suffix = unique_suffix()
    labmod._run(["ip", "netns", "add", f"mptcp-r-{suffix}"])  # as if lab_up died early
    assert labmod.lab_down(suffix) is True
    assert netns_with_suffix(suffix) == []
