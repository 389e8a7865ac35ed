"""The datapath attached to both lab paths during a real MPTCP transfer: per-subflow byte
counts agree with the kernel's (ss -ti bytes_sent/bytes_received) and each subflow carries the
token `ss -M` reports; detach leaves no program, qdisc or pin behind."""

import re
import subprocess
import sys
import textwrap

import pytest

from controller import datapath, view
from controller import lab as labmod
from controller.netns import entered

from .conftest import assert_datapath_gone

NBYTES = 12_000_000
PORT = 5201

# Runs in the client namespace: send, half-close, wait for the server's one-byte receipt (the
# connection, and so its subflows, still open), print the kernel's view of them, then close.
CLIENT = textwrap.dedent("""
    import socket, subprocess, sys
    addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    s.connect((addr, port))
    block = bytes(range(256)) * 4096
    left = n
    while left:
        left -= s.send(block[:min(left, len(block))])
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b"k"
    print(subprocess.run(["ss", "-tniH", "state", "established", "dport", "=", str(port)],
                         capture_output=True, text=True).stdout)
    s.close()
""")

SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept()
    total = 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        total += len(b)
    c.sendall(b"k")
    print(total, flush=True)
    sys.stdin.read()  # hold the connection until the test closes our stdin
    c.close()
""")


def parse_ss(text: str) -> dict:
    """{(local, lport, remote, rport): {bytes_sent, bytes_received, token}} for each subflow."""
    out = {}
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for head, info in zip(lines[0::2], lines[1::2], strict=False):
        f = head.split()
        (la, lp), (ra, rp) = f[-2].rsplit(":", 1), f[-1].rsplit(":", 1)
        sent = re.search(r"bytes_sent:(\d+)", info)
        recv = re.search(r"bytes_received:(\d+)", info)
        tok = re.search(r"token:\w+\(id:\d+\)/(\w+)\(id:\d+\)", info)
        # ss writes a device-bound socket's address as ADDR%DEV.
        la, ra = la.strip("[]").split("%")[0], ra.strip("[]").split("%")[0]
        out[(la, int(lp), ra, int(rp))] = {
            "bytes_sent": int(sent.group(1)) if sent else 0,
            "bytes_received": int(recv.group(1)) if recv else 0,
            "token": tok.group(1).rjust(8, "0") if tok else None,
        }
    return out


def test_subflow_bytes_and_tokens_agree_with_the_kernel(lab):
    ifaces = [p.client_if for p in lab.paths.values()]
    datapath.attach(ifaces, lab.client)
    try:
        server = subprocess.Popen(
            ["ip", "netns", "exec", lab.server, sys.executable, "-c", SERVER, lab.server_addr,
             str(PORT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            client = subprocess.run(
                ["ip", "netns", "exec", lab.client, sys.executable, "-c", CLIENT,
                 lab.server_addr, str(PORT), str(NBYTES)],
                capture_output=True, text=True, timeout=60, check=True)
            assert int(server.stdout.readline()) == NBYTES
        finally:
            server.stdin.close()
            server.kill()
            server.wait()
        kernel = parse_ss(client.stdout)
        assert len(kernel) == 2, f"expected a subflow per path, ss said:\n{client.stdout}"
        with entered(lab.client):
            dp = datapath.PinnedDatapath(lab.client)
            try:
                ours = {sf.key: sf for sf in view.snapshot(dp)}
            finally:
                dp.close()
        for key, k in kernel.items():
            assert key in ours, f"datapath has no subflow {key}; has {list(ours)}"
            sf = ours[key]
            assert sf.bytes_out == pytest.approx(k["bytes_sent"], rel=0.01), key
            assert sf.bytes_in == pytest.approx(k["bytes_received"], rel=0.01, abs=0), key
            assert sf.token == k["token"], key
        assert {sf.iface for sf in ours.values() if sf.key in kernel} == set(ifaces)
    finally:
        datapath.detach(lab.client)
    assert_datapath_gone(lab)


def test_attaching_twice_is_an_error_not_a_second_copy(lab):
    ifaces = [p.client_if for p in lab.paths.values()]
    datapath.attach(ifaces, lab.client)
    try:
        with pytest.raises(datapath.BadInput, match="already attached"):
            datapath.attach(ifaces, lab.client)
        out = labmod.ns_exec(lab.client, ["tc", "filter", "show", "dev", ifaces[0], "egress"],
                             capture_output=True, text=True).stdout
        assert out.count("mptcpctl") == 1
    finally:
        datapath.detach(lab.client)


def test_attach_to_a_missing_interface_changes_nothing(lab):
    good = next(iter(lab.paths.values())).client_if
    with pytest.raises(datapath.BadInput, match="no interface named"):
        datapath.attach([good, "nosuch0"], lab.client)
    assert not datapath.is_attached(lab.client)
    link = labmod.ns_exec(lab.client, ["ip", "link", "show", good], capture_output=True,
                          text=True).stdout
    assert "xdp" not in link
