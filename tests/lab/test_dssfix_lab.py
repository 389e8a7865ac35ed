"""Case 5 with the fix: an ALG on the router flips a payload byte (and patches the TCP checksum)
with DSS checksums on both ends. With `mptcpctl up --fix-dss-checksum` on the router the
connection stays multipath (no MP_FAIL, no checksum error, no fallback, both subflows alive)
and the receiver gets exactly what the ALG meant it to: the sent bytes with the ALG's one
change. Without the fix the receiver sends MP_FAIL, closes the subflow and gets the sent bytes
unchanged (the kernel resends the mapping on the other path). Both ends compare SHA-256.

The sender writes 1000-byte messages with pauses (TCP_NODELAY), the traffic of the control
protocols ALGs rewrite: each message is one segment with its own DSS mapping, the case the fix
can handle (docs/dssfix.md: a mapping spanning segments is checked against its first
segment's checksum, which has already gone by when a later segment is changed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller import abi, datapath
from controller import lab as labmod

from . import middleboxes as mb
from .test_daemon_lab import cli

ROOT = Path(__file__).resolve().parents[2]
# 1500 one-segment messages, 2 ms apart: ~4 s; the ALG changes the 300th client segment.
MESSAGES, SIZE, GAP_S, NTH = 1500, 1000, 0.002, 300

# The stream both ends derive from the seed: messages of `size` bytes.
STREAM = r"""
import random
def stream(count, size):
    rnd = random.Random(5)
    return b"".join(rnd.randbytes(size) for _ in range(count))
"""

SENDER = STREAM + r"""
import hashlib, json, socket, sys, time
from controller.transfer import subflows_by_ss
addr, port, count, size, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), float(sys.argv[5])
data = stream(count, size)
with socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262) as s:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.connect((addr, port))
    for i in range(count):
        s.sendall(data[i * size:(i + 1) * size])
        time.sleep(gap)
    subflows = subflows_by_ss(addr, port)
    s.shutdown(socket.SHUT_WR)
    while s.recv(4096):
        pass
print(json.dumps({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                  "subflows": subflows}))
"""

# Receives one connection and reports its SHA-256 and every byte that differs from the stream.
RECEIVER = STREAM + r"""
import hashlib, json, socket, sys
count, size = int(sys.argv[1]), int(sys.argv[2])
want = stream(count, size)
with socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262) as ls:
    ls.bind(("0.0.0.0", 0))
    ls.listen(1)
    print("ready", ls.getsockname()[1], flush=True)
    conn, _ = ls.accept()
    got = bytearray()
    with conn:
        while chunk := conn.recv(1 << 16):
            got += chunk
diffs = [[i, got[i], want[i]] for i in range(min(len(got), len(want))) if got[i] != want[i]]
print(json.dumps({"bytes": len(got), "sha256": hashlib.sha256(got).hexdigest(),
                  "diffs": diffs[:10]}))
"""


def mptcp_mib(ns: str) -> dict[str, int]:
    """The namespace's MPTcpExt counters (/proc/net/netstat; fresh with each lab)."""
    text = labmod.ns_exec(ns, ["cat", "/proc/net/netstat"], capture_output=True, text=True,
                          check=True).stdout
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("MPTcpExt:")]
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=True)}


def failures(lab) -> dict[str, int]:
    """Checksum errors, MP_FAILs and fallbacks, summed over client and server."""
    names = ("DataCsumErr", "MPFailTx", "MPFailRx", "InfiniteMapTx", "InfiniteMapRx",
             "DSSCorruptionFallback", "DSSCorruptionReset", "DssFallback")
    out = dict.fromkeys(names, 0)
    for ns in (lab.client, lab.server):
        mib = mptcp_mib(ns)
        for k in names:
            out[k] += mib.get(k, 0)
    return out


def send_messages(lab) -> tuple[dict, dict]:
    """The paced messages from client to server: (sender's report, receiver's report)."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.server, sys.executable, "-c", RECEIVER, str(MESSAGES),
         str(SIZE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        port = server.stdout.readline().split()[1]
        cp = subprocess.run(
            ["ip", "netns", "exec", lab.client, sys.executable, "-c", SENDER, lab.server_addr,
             port, str(MESSAGES), str(SIZE), str(GAP_S)],
            capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert cp.returncode == 0, cp.stderr
        out, err = server.communicate(timeout=30)
        assert server.returncode == 0, err
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    sent, got = json.loads(cp.stdout), json.loads(out.strip().splitlines()[-1])
    assert got["bytes"] == sent["bytes"]
    return sent, got


@pytest.fixture
def csum_lab(lab):
    """The lab (with its in-kernel endpoints: two subflows) and DSS checksums on both ends."""
    for ns in (lab.client, lab.server):
        labmod.ns_exec(ns, ["sysctl", "-qw", "net.mptcp.checksum_enabled=1"], check=True)
    yield lab
    cli("down", "--netns", lab.router, check=False)


def router_tc(lab) -> str:
    out = []
    for dev in [p.router_if for p in lab.paths.values()] + [lab.router_server_if]:
        for what in (["qdisc", "show", "dev", dev], ["filter", "show", "dev", dev, "egress"],
                     ["filter", "show", "dev", dev, "ingress"]):
            out.append(labmod.ns_exec(lab.router, ["tc", *what], capture_output=True,
                                      text=True).stdout)
    return "".join(out)


@pytest.mark.parametrize("tx_csum", ["on", "off"])
def test_the_fix_on_the_gateway_keeps_the_connection_multipath(csum_lab, tx_csum):
    """tx_csum off: the client computes TCP checksums itself, so the fix verifies them before
    rewriting (fixed); on: veth leaves them to "offload" (CHECKSUM_PARTIAL), so the field
    holds only the pseudo-header sum and the fix is counted as fixed_partial."""
    lab = csum_lab
    for p in lab.paths.values():
        labmod.ns_exec(lab.client, ["ethtool", "-K", p.client_if, "tx", tx_csum],
                       capture_output=True, check=True)
    cli("up", "--netns", lab.router, "--pm", "kernel", "--no-datapath", "--cc", "uncoupled",
        "--fix-dss-checksum")
    with mb.modify_payload(lab, nth=NTH) as modified:
        sent, got = send_messages(lab)
        assert modified() == 1
    # What the ALG meant the server to get: one byte, the first of a segment (= a message),
    # flipped by 0x20; nothing else changed.
    assert len(got["diffs"]) == 1, got["diffs"]
    pos, now, was = got["diffs"][0]
    assert now == was ^ 0x20 and pos % SIZE == 0, got["diffs"]
    st = json.loads(cli("status", "--netns", lab.router, "--json").stdout)
    fix = st["dss_fix"]
    assert sorted(fix["ifaces"]) == sorted(
        [p.router_if for p in lab.paths.values()] + [lab.router_server_if])
    c = fix["counters"]
    fixed_kind = "fixed" if tx_csum == "off" else "fixed_partial"
    assert c[fixed_kind] == 1, c
    assert c["corrupt"] == 0 and c["spanning"] == 0, c
    # Every message but the first (its mapping rides in MP_CAPABLE, which the fix leaves alone).
    assert c["checked"] >= MESSAGES - 1, c
    assert sum(f["fixed"] for f in fix["subflows"]) == 1
    assert all(v == 0 for v in failures(lab).values()), failures(lab)
    assert len(sent["subflows"]) == 2, sent["subflows"]   # still multipath at the end

    cli("down", "--netns", lab.router)
    assert "clsact" not in router_tc(lab) and "bpf" not in router_tc(lab)
    assert not (datapath.RUN_ROOT / lab.router).exists()
    assert not datapath.pin_dir(lab.router).exists()


def test_without_the_fix_the_receiver_sends_mp_fail(csum_lab):
    lab = csum_lab
    with mb.modify_payload(lab, nth=NTH) as modified:
        sent, got = send_messages(lab)
        assert modified() == 1
    assert got["sha256"] == sent["sha256"] and got["diffs"] == []   # resent unchanged
    f = failures(lab)
    assert f["DataCsumErr"] >= 1 and f["MPFailTx"] >= 1, f
    assert len(sent["subflows"]) < 2, sent["subflows"]   # the failed subflow was closed
    assert "clsact" not in router_tc(lab)


def test_down_after_a_crashed_gateway_daemon_removes_the_fix(csum_lab):
    """SIGKILL leaves the filters attached (traffic keeps flowing through them); `down`
    removes them, the clsact qdiscs and the state file."""
    import os
    import signal
    import time

    from controller import daemon, dssfix

    lab = csum_lab
    cli("up", "--netns", lab.router, "--pm", "kernel", "--no-datapath", "--cc", "uncoupled",
        "--fix-dss-checksum")
    assert router_tc(lab).count("mptcpctl_dssfix") == 3
    pid = daemon.running_pid(lab.router)
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if daemon.running_pid(lab.router) is None:
            break
        time.sleep(0.05)
    assert "mptcpctl_dssfix" in router_tc(lab)
    assert dssfix.state_file(lab.router).exists()
    assert "cleaned up" in cli("down", "--netns", lab.router).stdout
    assert "clsact" not in router_tc(lab) and "bpf" not in router_tc(lab)
    assert not dssfix.state_file(lab.router).exists()
    assert not (datapath.RUN_ROOT / lab.router).exists()


def test_the_fix_and_the_datapath_share_a_gateway_and_down_leaves_nothing(csum_lab):
    """With the datapath on too, both filters sit on one clsact qdisc per interface (in
    whichever order they came); down removes both and the qdisc."""
    lab = csum_lab
    cli("up", "--netns", lab.router, "--pm", "kernel", "--cc", "uncoupled",
        "--fix-dss-checksum")
    tc = router_tc(lab)
    assert tc.count("mptcpctl_dssfix") == 3 and "mptcpctl" in tc.replace("mptcpctl_dssfix", "")
    with mb.modify_payload(lab, nth=NTH) as modified:
        sent, got = send_messages(lab)
        assert modified() == 1
    assert len(got["diffs"]) == 1 and len(sent["subflows"]) == 2
    assert all(v == 0 for v in failures(lab).values()), failures(lab)
    # The datapath's egress filter, after ours in the chain, still saw the data go out.
    pinned = datapath.PinnedDatapath(lab.router)
    try:
        egress = sum(v.dir[abi.Direction.DIR_EGRESS].bytes for _k, v in pinned.subflows.items())
    finally:
        pinned.close()
    assert egress >= MESSAGES * SIZE
    cli("down", "--netns", lab.router)
    assert "clsact" not in router_tc(lab) and "bpf" not in router_tc(lab)
    for dev in [p.router_if for p in lab.paths.values()] + [lab.router_server_if]:
        link = labmod.ns_exec(lab.router, ["ip", "link", "show", dev], capture_output=True,
                              text=True).stdout
        assert "xdp" not in link
    assert not datapath.pin_dir(lab.router).exists()
