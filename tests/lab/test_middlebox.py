"""Hostile networks: `mptcpctl up` on the lab client (the server keeps the in-kernel PM) with a
middlebox on the router (tests/lab/middleboxes.py). Every transfer arrives intact (SHA-256),
and `status --json` names what the middlebox did in "health" (and as a "health" event), or
names nothing when MPTCP is unaffected."""

import json

import pytest

from controller import lab as labmod

from . import middleboxes as mb
from .conftest import add_server_address
from .test_daemon_lab import Background, cli, client_subflows, poll, status

# Long enough to span a few health ticks (one a second), short enough for a quick file.
NBYTES, RATE = 4_000_000, "12mbit"


@pytest.fixture
def bare_lab(lab):
    """The lab without the client's in-kernel endpoints: the daemon makes every subflow."""
    labmod.ns_exec(lab.client, ["ip", "mptcp", "endpoint", "flush"], check=True)
    yield lab
    cli("down", "--netns", lab.client, check=False)


def health(lab, ns=None):
    return json.loads(cli("status", "--netns", ns or lab.client, "--json").stdout)["health"]


def kinds(findings):
    return [f["kind"] for f in findings]


def assert_noted(lab, finding, ns=None):
    """The finding also went to the event log, word for word."""
    events = json.loads(cli("status", "--netns", ns or lab.client, "--json").stdout)["events"]
    assert {"event": "health", "detail": finding["detail"]} in [
        {"event": e["event"], "detail": e["detail"]} for e in events]


def test_mptcp_stripped_from_the_syn_falls_back_and_is_reported(bare_lab):
    lab = bare_lab
    cli("up", "--netns", lab.client)
    with mb.strip_mptcp_from_syn(lab):
        sent, _ = Background(lab, NBYTES, rate=RATE).result()
    assert len(sent["subflows"]) <= 1   # plain TCP: no second path
    found = poll("a no_mptcp finding", lambda: [
        f for f in health(lab) if f["kind"] == "no_mptcp"])
    assert len(found) == 1
    detail = found[0]["detail"]
    assert "peer or path does not support MPTCP" in detail
    assert f"-> {lab.server_addr}:" in detail and "no MP_CAPABLE came back" in detail
    assert_noted(lab, found[0])


def test_mptcp_stripped_after_the_handshake_falls_back_and_is_reported(bare_lab):
    lab = bare_lab
    cli("up", "--netns", lab.client)
    with mb.strip_mptcp_after_handshake(lab):
        Background(lab, NBYTES, rate=RATE).result()
    found = poll("a no_mptcp finding", lambda: [
        f for f in health(lab) if f["kind"] == "no_mptcp"])
    assert len(found) == 1
    assert "MPTCP options vanished from later segments" in found[0]["detail"]
    assert_noted(lab, found[0])


def test_rewritten_sequence_numbers_leave_mptcp_alone(bare_lab):
    lab = bare_lab
    cli("up", "--netns", lab.client)
    with mb.rewrite_sequence_numbers(lab) as rewritten:
        sent, _ = Background(lab, NBYTES, rate=RATE).result()
        assert rewritten() > 1000
    paths = {s["local"].split(":")[0] for s in sent["subflows"] if s["bytes_sent"] > 0}
    assert paths == {p.client_addr for p in lab.paths.values()}
    assert health(lab) == []


def test_split_and_coalesced_segments_arrive_intact(bare_lab):
    lab = bare_lab
    cli("up", "--netns", lab.client)
    with mb.offloads_on(lab):
        sent, _ = Background(lab, 8_000_000).result()
    assert len([s for s in sent["subflows"] if s["bytes_sent"] > 0]) == 2
    assert health(lab) == []


def test_a_dropped_add_addr_is_reported_by_the_announcing_side(bare_lab):
    """The client never sees a dropped ADD_ADDR; the server, which resends it, can tell.
    So mptcpctl runs on both ends here (the server's with --pm kernel: it only watches)."""
    lab = bare_lab
    extra = add_server_address(lab)
    labmod.ns_exec(lab.server, ["sysctl", "-qw", "net.mptcp.add_addr_timeout=1"], check=True)
    labmod.ns_exec(lab.server, ["ip", "mptcp", "endpoint", "add", extra, "signal"], check=True)
    cli("up", "--netns", lab.client)
    cli("up", "--netns", lab.server, "--pm", "kernel", "--no-datapath", "--cc", "uncoupled")
    try:
        with mb.drop_add_addr_towards_client(lab):
            job = Background(lab, 6_000_000, rate=RATE)
            found = poll("an add_addr_not_echoed finding on the server", lambda: [
                f for f in health(lab, lab.server) if f["kind"] == "add_addr_not_echoed"],
                timeout=15)
            job.result()
        assert "ADD_ADDR not echoed" in found[0]["detail"]
        assert_noted(lab, found[0], lab.server)
        assert not [s for s in client_subflows(lab) if s.remote == extra]
        assert health(lab) == []   # nothing the client could see
    finally:
        cli("down", "--netns", lab.server, check=False)


def test_nat_on_one_path_works_and_an_unreachable_announced_address_is_given_up(
        bare_lab, tmp_path):
    lab = bare_lab
    # A private address of the server that the router cannot route (it answers at once with
    # ICMP unreachable, unthrottled), announced by the server's in-kernel PM.
    private = "10.81.77.3"
    labmod.ns_exec(lab.server, ["ip", "addr", "add", f"{private}/32", "dev", lab.server_if],
                   check=True)
    labmod.ns_exec(lab.server, ["ip", "mptcp", "endpoint", "add", private, "signal"],
                   check=True)
    labmod.ns_exec(lab.router, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"], check=True)
    conf = tmp_path / "mptcpctl.toml"
    conf.write_text("retry_base_ms = 50\nretry_max_ms = 200\nretry_attempts = 3\n")
    cli("up", "--netns", lab.client, "--config", str(conf))
    with mb.masquerade_path(lab, "lte"):
        job = Background(lab, 8_000_000, rate="16mbit")
        found = poll("a peer_addr_unreachable finding", lambda: [
            f for f in health(lab) if f["kind"] == "peer_addr_unreachable"], timeout=15)
        creates = poll("the create events", lambda: [
            e for e in status(lab)["events"]
            if e["event"] == "subflow_create" and private in e["detail"]])
        sent, _ = job.result()
    lte = lab.paths["lte"].client_addr
    assert any(s["local"].startswith(lte + ":") and s["bytes_sent"] > 0
               for s in sent["subflows"]), sent["subflows"]
    assert len(found) == 1 and f"address {private} announced by the peer is unreachable" \
        in found[0]["detail"]
    assert_noted(lab, found[0])
    # Given up: at most retry_attempts tries from each local address, and no more since.
    assert 0 < len(creates) <= 3 * len(lab.paths)
    assert len([e for e in status(lab)["events"] if e["event"] == "subflow_create"
                and private in e["detail"]]) == len(creates)


def test_modified_payload_is_caught_by_the_dss_checksum_and_reported(bare_lab):
    """Case 5: an ALG flips payload bytes and fixes the TCP checksum, with DSS checksums on
    both ends. The receiver's datapath (the server runs mptcpctl here, watching) sees the
    mismatch and names the path; the kernel's MP_FAIL handling keeps the data intact.
    The same case with `up --fix-dss-checksum` on the router: tests/lab/test_dssfix_lab.py."""
    lab = bare_lab
    for ns in (lab.client, lab.server):
        labmod.ns_exec(ns, ["sysctl", "-qw", "net.mptcp.checksum_enabled=1"], check=True)
    cli("up", "--netns", lab.client)
    cli("up", "--netns", lab.server, "--pm", "kernel", "--cc", "uncoupled")
    try:
        with mb.modify_payload(lab, nth=300) as modified:
            job = Background(lab, NBYTES, rate=RATE)
            found = poll("a payload_modified finding on the server", lambda: [
                f for f in health(lab, lab.server) if f["kind"] == "payload_modified"],
                timeout=20)
            job.result()
            assert modified() >= 1
        assert "payload modified on path" in found[0]["detail"]
        assert lab.server_if in found[0]["detail"]
        assert_noted(lab, found[0], lab.server)
        # The datapath's event said it first, with the mapping, and the kernel's answer
        # went out on the same subflow.
        events = json.loads(cli("status", "--netns", lab.server, "--json").stdout)["events"]
        logged = {e["event"]: e["detail"] for e in events}
        subflow = found[0]["detail"].split(" on ")[-1]
        client, server = subflow.split(" -> ")
        assert f"DSS checksum mismatch on {server} -> {client} ({lab.server_if})" \
            in logged["dss_csum_bad"]
        assert f"MP_FAIL sent on {server} -> {client}" in logged["mp_fail"], logged
        # Linux resets the subflow that carried it, saying why.
        assert f"MP_TCPRST sent on {server} -> {client}" in logged["tcprst"]
        assert "reason 6 (middlebox interference)" in logged["tcprst"]
    finally:
        cli("down", "--netns", lab.server, check=False)
