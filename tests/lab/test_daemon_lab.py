"""`mptcpctl up` on the lab client, real kernels on both ends: subflows on every path,
joins to addresses the server announces, backup paths, handovers (make-before-break and
break-before-make) with every byte intact, events as `ip mptcp monitor` sees them, a clean
`down`, survival of a SIGKILL, and one-line errors that change nothing."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from controller import daemon, datapath, diag, transfer
from controller import lab as labmod
from controller.netns import entered as netns_entered

from .conftest import add_server_address, assert_datapath_gone, datapath_leftovers

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, check=True, timeout=60):
    cp = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=timeout)
    if check and cp.returncode != 0:
        raise AssertionError(f"mptcpctl {' '.join(args)} -> {cp.returncode}: {cp.stderr}")
    return cp


def poll(what, fn, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def client_subflows(lab, port=None):
    subs = [s for s in diag.subflows(lab.client) if s.token is not None]
    return [s for s in subs if port is None or s.rport == port]


def status(lab):
    return json.loads(cli("status", "--netns", lab.client, "--json").stdout)


@pytest.fixture
def bare_lab(lab):
    """The lab without the in-kernel endpoints: every extra subflow is the daemon's doing."""
    labmod.ns_exec(lab.client, ["ip", "mptcp", "endpoint", "flush"], check=True)
    yield lab
    cli("down", "--netns", lab.client, check=False)


class Background:
    """A transfer running in a thread; .result() waits for it."""

    def __init__(self, lab, nbytes, rate=None, timeout=60.0):
        self.out, self.err = None, None

        def run():
            try:
                self.out = transfer.run_transfer(lab, nbytes, timeout=timeout, rate_limit=rate)
            except Exception as e:
                self.err = e

        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()

    def result(self, timeout=90.0):
        self.t.join(timeout)
        if self.err:
            raise self.err
        assert self.out is not None, "transfer did not finish"
        sent, got = self.out
        assert got["bytes"] == sent["bytes"] and got["sha256"] == sent["sha256"], "corrupted"
        return sent, got


def test_fullmesh_puts_a_subflow_on_every_path(bare_lab):
    lab = bare_lab
    cli("up", "--netns", lab.client)
    sent, got = Background(lab, 8_000_000).result()
    paths = {s["local"].split(":")[0] for s in sent["subflows"] if s["bytes_sent"] > 0}
    assert paths == {p.client_addr for p in lab.paths.values()}


def test_an_address_the_server_announces_gets_joined(bare_lab):
    lab = bare_lab
    extra = add_server_address(lab)
    labmod.ns_exec(lab.server, ["ip", "mptcp", "limits", "set", "subflows", "8",
                                "add_addr_accepted", "8"], check=True)
    labmod.ns_exec(lab.server, ["ip", "mptcp", "endpoint", "add", extra, "signal"], check=True)
    cli("up", "--netns", lab.client)
    job = Background(lab, 6_000_000, rate="16mbit")
    poll("subflows to the announced address",
         lambda: {s.local for s in client_subflows(lab) if s.remote == extra}
         == {p.client_addr for p in lab.paths.values()})
    job.result()


def test_backup_path_carries_nothing_until_the_primary_dies(bare_lab):
    lab = bare_lab
    wifi, lte = lab.paths["wifi"], lab.paths["lte"]
    cli("up", "--netns", lab.client, "--backup", lte.client_if)
    job = Background(lab, 10_000_000, rate="12mbit")
    poll("a backup subflow on lte",
         lambda: any(s.local == lte.client_addr and s.backup for s in client_subflows(lab)))
    time.sleep(2)  # let data flow: the measurement below needs a busy primary
    subs = client_subflows(lab)
    on_lte = sum(s.bytes_sent or 0 for s in subs if s.local == lte.client_addr)
    total = sum(s.bytes_sent or 0 for s in subs)
    assert total > 1_000_000 and on_lte < 0.01 * total, (on_lte, total)
    labmod.set_path(lab, "wifi", link=False)
    sent, _ = job.result()
    lte_bytes = sum(s["bytes_sent"] for s in sent["subflows"]
                    if s["local"].startswith(lte.client_addr + ":"))
    assert lte_bytes > 1_000_000
    destroyed = [e["detail"] for e in status(lab)["events"] if e["event"] == "subflow_destroy"]
    assert any(f" {wifi.client_addr}:" in f" {d}" for d in destroyed), destroyed


def test_make_before_break_wifi_dies_and_the_transfer_finishes_intact(bare_lab):
    lab = bare_lab
    cli("up", "--netns", lab.client)
    job = Background(lab, 8_000_000, rate="16mbit")
    poll("two subflows", lambda: len(client_subflows(lab)) == 2)
    labmod.set_path(lab, "wifi", link=False)
    job.result()


def test_break_before_make_lte_appears_half_a_second_after_wifi_died(bare_lab):
    lab = bare_lab
    labmod.set_path(lab, "lte", addr=False)
    cli("up", "--netns", lab.client)
    job = Background(lab, 6_000_000, rate="12mbit")
    poll("the transfer on wifi", lambda: len(client_subflows(lab)) == 1)
    time.sleep(1)
    labmod.set_path(lab, "wifi", link=False)
    time.sleep(0.5)
    labmod.set_path(lab, "lte", addr=True)
    job.result()
    events = [e["event"] for e in status(lab)["events"]]
    assert "handover" in events


def test_ip_mptcp_monitor_sees_the_events_the_daemon_logged(bare_lab):
    lab = bare_lab
    mon = subprocess.Popen(["ip", "netns", "exec", lab.client, "ip", "mptcp", "monitor"],
                           stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)  # `ip mptcp monitor` prints nothing when it has subscribed
        cli("up", "--netns", lab.client)
        Background(lab, 2_000_000).result()
        logged = poll("the daemon's closed event", lambda: [
            e for e in status(lab)["events"] if e["event"] == "closed"] and status(lab)["events"])
        ours = [e for e in logged
                if e["event"] in ("created", "established", "sub_established", "closed")]
    finally:
        mon.send_signal(signal.SIGINT)
        out = mon.communicate(timeout=5)[0]
    theirs = [m.group(1).lower() for m in re.finditer(r"^\[\s*(\w+)\]", out, re.M)]
    theirs = [t for t in theirs if t in ("created", "established", "sf_established", "closed")]
    mine = [e["event"].replace("sub_", "sf_") for e in ours]
    assert theirs == mine, (theirs, mine)
    tokens = {e["detail"].split()[0] for e in ours}
    assert len(tokens) == 1 and all(t.split("=")[1] in out for t in tokens)


def test_down_restores_the_path_manager_and_leaves_nothing(bare_lab):
    lab = bare_lab
    before = labmod.ns_exec(lab.client, ["sysctl", "-n", "net.mptcp.path_manager"],
                            capture_output=True, text=True).stdout.strip()
    limits_before = labmod.ns_exec(lab.client, ["ip", "mptcp", "limits"],
                                   capture_output=True, text=True).stdout
    cli("up", "--netns", lab.client)
    assert labmod.ns_exec(lab.client, ["sysctl", "-n", "net.mptcp.path_manager"],
                          capture_output=True, text=True).stdout.strip() == "userspace"
    cli("down", "--netns", lab.client)
    assert labmod.ns_exec(lab.client, ["sysctl", "-n", "net.mptcp.path_manager"],
                          capture_output=True, text=True).stdout.strip() == before
    assert labmod.ns_exec(lab.client, ["ip", "mptcp", "limits"], capture_output=True,
                          text=True).stdout == limits_before
    assert_datapath_gone(lab)
    assert not daemon.run_dir(lab.client).exists()


def test_sigkill_leaves_traffic_flowing_and_a_new_up_adopts_the_connection(bare_lab):
    lab = bare_lab
    cli("up", "--netns", lab.client)
    job = Background(lab, 8_000_000, rate="8mbit")
    poll("two subflows", lambda: len(client_subflows(lab)) == 2)
    token = client_subflows(lab)[0].token
    os.kill(daemon.running_pid(lab.client), signal.SIGKILL)
    poll("the daemon gone", lambda: daemon.running_pid(lab.client) is None)
    cli("up", "--netns", lab.client)
    tokens = {c["token"] for c in status(lab)["connections"]}
    assert f"{token:08x}" in tokens
    job.result()


@pytest.mark.parametrize("args,code,text", [
    (["--iface", "nosuch0"], 2, "no interface named 'nosuch0'"),
    (["--backup", "nosuch0"], 2, "no interface named 'nosuch0'"),
    (["--config", "/nonexistent/mptcpctl.toml"], 2, "does not exist"),
])
def test_bad_input_is_one_line_and_changes_nothing(bare_lab, args, code, text):
    lab = bare_lab
    before = labmod.ns_exec(lab.client, ["sysctl", "-n", "net.mptcp.path_manager"],
                            capture_output=True, text=True).stdout
    cp = cli("up", "--netns", lab.client, *args, check=False)
    assert cp.returncode == code
    assert cp.stderr.count("\n") == 1 and text in cp.stderr, cp.stderr
    assert labmod.ns_exec(lab.client, ["sysctl", "-n", "net.mptcp.path_manager"],
                          capture_output=True, text=True).stdout == before
    assert not datapath.pin_dir(lab.client).exists()
    assert not daemon.run_dir(lab.client).exists()


def test_bad_config_key_and_second_up_are_one_line_errors(bare_lab, tmp_path):
    lab = bare_lab
    conf = tmp_path / "mptcpctl.toml"
    conf.write_text('policy = "fullmesh"\nbogus = 1\n')
    cp = cli("up", "--netns", lab.client, "--config", str(conf), check=False)
    assert cp.returncode == 2 and "mptcpctl.toml:2: unknown key 'bogus'" in cp.stderr
    cli("up", "--netns", lab.client)
    pid = daemon.running_pid(lab.client)
    cp = cli("up", "--netns", lab.client, check=False)
    assert cp.returncode == 1 and cp.stderr.count("\n") == 1
    assert f"already running in netns {lab.client} (pid {pid})" in cp.stderr
    assert daemon.running_pid(lab.client) == pid


def test_non_root_up_is_refused_in_one_line(bare_lab):
    code = "import sys; from cli.main import main; sys.argv=['mptcpctl', *sys.argv[1:]]; main()"
    cp = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                         sys.executable, "-c", code, "up", "--netns", bare_lab.client],
                        capture_output=True, text=True, cwd=ROOT)
    assert cp.returncode == 1 and cp.stderr.count("\n") == 1 and "needs root" in cp.stderr


def test_the_control_socket_refuses_other_users(bare_lab):
    lab = bare_lab
    cli("up", "--netns", lab.client)
    path = daemon.control_path(lab.client)
    assert (path.stat().st_mode & 0o777) == 0o600
    # The daemon answers a stranger before reading a byte, so sending may meet a closed socket.
    code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "try:\n    s.sendall(b'{\"cmd\": \"status\"}\\n')\nexcept BrokenPipeError:\n    pass\n"
            "print(s.recv(4096).decode())")
    with contextlib.suppress(Exception):
        os.chmod(path, 0o666)  # even when someone loosens the mode, credentials decide
    cp = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                         sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert "permission denied" in (cp.stdout + cp.stderr).lower()
    assert "connections" not in cp.stdout


def test_ndiffports_opens_n_subflows_over_the_initial_pair(bare_lab):
    lab = bare_lab
    cli("up", "--netns", lab.client, "--ndiffports", "3")
    job = Background(lab, 6_000_000, rate="16mbit")
    wifi = lab.paths["wifi"].client_addr
    subs = poll("three subflows on wifi", lambda: (
        s := client_subflows(lab)) and len([x for x in s if x.local == wifi]) == 3 and s)
    assert {s.local for s in subs} == {wifi}
    assert len({s.lport for s in subs}) == 3
    job.result()


def test_a_server_side_daemon_announces_its_other_address(bare_lab):
    lab = bare_lab
    extra = add_server_address(lab)
    # The client keeps the in-kernel PM and accepts announcements.
    labmod.ns_exec(lab.client, ["ip", "mptcp", "limits", "set", "subflows", "4",
                                "add_addr_accepted", "4"], check=True)
    cli("up", "--netns", lab.server, "--no-datapath", "--cc", "uncoupled")
    try:
        job = Background(lab, 6_000_000, rate="16mbit")
        poll("a client subflow to the announced address",
             lambda: any(s.remote == extra for s in client_subflows(lab)))
        job.result()
        events = json.loads(cli("status", "--netns", lab.server, "--json").stdout)["events"]
        assert any(e["event"] == "announce" and extra in e["detail"] for e in events)
    finally:
        cli("down", "--netns", lab.server, check=False)


def test_pm_kernel_keeps_the_in_kernel_manager_and_its_endpoints(lab):
    """--pm kernel: the user's endpoints do the path management; mptcpctl watches."""
    try:
        cli("up", "--netns", lab.client, "--pm", "kernel")
        assert labmod.ns_exec(lab.client, ["sysctl", "-n", "net.mptcp.path_manager"],
                              capture_output=True, text=True).stdout.strip() == "kernel"
        sent, _ = Background(lab, 6_000_000).result()
        assert len([s for s in sent["subflows"] if s["bytes_sent"] > 0]) == 2
        st = status(lab)
        assert st["pm"] == "kernel"
        assert not [e for e in st["events"] if e["event"] == "subflow_create"]
    finally:
        cli("down", "--netns", lab.client, check=False)


def daemon_listeners(ns) -> list[str]:
    """Local address:port of every TCP or UDP socket the namespace's daemon listens on."""
    pid = daemon.running_pid(ns)
    assert pid
    out = labmod.ns_exec(ns, ["ss", "-ltunpH"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[4] for line in out.splitlines() if f"pid={pid}," in line]


def test_top_shows_each_subflow_on_its_path_with_the_daemon_mode(bare_lab):
    """`mptcpctl top` during a transfer: one row per live subflow, on both paths, with the
    path manager and algorithm in force and the daemon's events."""
    lab = bare_lab
    cli("up", "--netns", lab.client)
    job = Background(lab, 8_000_000, rate="8mbit")
    poll("two subflows", lambda: len(client_subflows(lab)) == 2)
    cp = subprocess.run([sys.executable, "-m", "cli.main", "top", "--netns", lab.client,
                         "--duration", "1.5", "--interval", "0.5"], capture_output=True,
                        text=True, cwd=ROOT, timeout=30, env={**os.environ, "COLUMNS": "250"},
                        stdin=subprocess.DEVNULL)
    job.result()
    assert cp.returncode == 0, cp.stderr
    head = cp.stdout.splitlines()[0]
    assert f"netns {lab.client}" in head and "pm userspace" in head and "cc lia" in head
    assert "2 subflows" in head, head
    for p in lab.paths.values():
        assert f"{p.client_addr}:" in cp.stdout and p.client_if in cp.stdout, cp.stdout
    assert "subflow_create" in cp.stdout


def test_the_daemon_listens_on_no_port_unless_asked(bare_lab):
    """Security: no TCP (or UDP) listener exists unless the user enables metrics."""
    lab = bare_lab
    cli("up", "--netns", lab.client)
    Background(lab, 2_000_000).result()
    assert daemon_listeners(lab.client) == []


def test_metrics_are_scraped_from_the_daemon(bare_lab):
    """`--metrics` serves Prometheus text in the daemon's namespace, fed by its status; a
    port alone binds 127.0.0.1."""
    lab = bare_lab
    cli("up", "--netns", lab.client, "--metrics", "9464")
    assert daemon_listeners(lab.client) == ["127.0.0.1:9464"]
    job = Background(lab, 6_000_000, rate="8mbit")
    scrape = ("import urllib.request; print(urllib.request.urlopen("
              "'http://127.0.0.1:9464/metrics', timeout=5).read().decode())")

    def text():
        cp = labmod.ns_exec(lab.client, [sys.executable, "-c", scrape], capture_output=True,
                            text=True)
        return cp.returncode == 0 and cp.stdout

    body = poll("subflow bytes in the scrape", lambda: (
        t := text()) and "mptcpctl_subflow_bytes_total{" in t and t, timeout=15)
    assert "mptcpctl_options_total" in body and "mptcpctl_connections 1.0" in body
    job.result()
    # No TCP listener outside the namespace, and none at all without --metrics.
    assert "9464" not in subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout


def test_down_after_a_crash_and_a_deleted_namespace_removes_what_is_left(tmp_path):
    from gates import missing_root_netns, skip_or_fail

    skip_or_fail(missing_root_netns())
    ns = f"mptcp-gone-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        cli("up", "--netns", ns)
        prog = json.loads(daemon.saved_path(ns).read_text())["sockops_prog_id"]
        os.kill(daemon.running_pid(ns), signal.SIGKILL)
        poll("the daemon gone", lambda: daemon.running_pid(ns) is None)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert daemon.run_dir(ns).exists()  # what the crash left
    assert "cleaned up" in cli("down", "--netns", ns).stdout
    assert not daemon.run_dir(ns).exists()
    assert not datapath.pin_dir(ns).exists()
    from controller import sockops

    assert prog not in sockops.attached_ids()


# The sysctls that select the path manager (`up` sets the one this kernel has; on kernels
# >= 6.15 path_manager and pm_type follow each other).
PM_SYSCTLS = ("net.mptcp.path_manager", "net.mptcp.pm_type")


def pm_settings(ns) -> dict:
    """What `up` changes in `ns` and `down` puts back: the path-manager sysctls (None where
    this kernel has none) and the MPTCP limits."""
    values = {}
    for name in PM_SYSCTLS:
        cp = labmod.ns_exec(ns, ["sysctl", "-n", name], capture_output=True, text=True)
        values[name] = cp.stdout.strip() if cp.returncode == 0 else None
    values["limits"] = labmod.ns_exec(ns, ["ip", "mptcp", "limits"], capture_output=True,
                                      text=True, check=True).stdout
    return values


def test_down_after_a_crash_restores_the_namespace_as_it_was_before_up(bare_lab):
    from controller import sockops

    lab = bare_lab
    before = pm_settings(lab.client)
    cli("up", "--netns", lab.client)
    prog = json.loads(daemon.saved_path(lab.client).read_text())["sockops_prog_id"]
    os.kill(daemon.running_pid(lab.client), signal.SIGKILL)
    poll("the daemon gone", lambda: daemon.running_pid(lab.client) is None)
    # What the crash left: every change `up` made is still in place.
    crashed = pm_settings(lab.client)
    assert crashed["net.mptcp.pm_type"] == "1"  # userspace
    assert crashed["net.mptcp.path_manager"] in (None, "userspace")
    assert crashed["limits"] != before["limits"]
    left = datapath_leftovers(lab)
    assert datapath.pin_dir(lab.client).exists()
    assert {f"{what} on {p.client_if}" for p in lab.paths.values()
            for what in ("XDP", "clsact", "tc egress filter")} <= set(left), left
    assert prog in sockops.attached_ids()
    cp = cli("down", "--netns", lab.client)
    assert cp.returncode == 0 and "cleaned up" in cp.stdout
    assert pm_settings(lab.client) == before
    assert_datapath_gone(lab)
    assert prog not in sockops.attached_ids()
    assert not daemon.run_dir(lab.client).exists()


def test_dss_checksums_are_verified_on_every_subflow_of_a_connection_joins_included(bare_lab):
    """Checksums are negotiated in MP_CAPABLE only; the server's daemon tells its datapath
    each subflow's connection token (from the path manager's events), so the join subflow
    learns that its connection uses checksums and its data is verified too."""
    from controller import abi

    lab = bare_lab
    with sysctl_on_both(lab, "net.mptcp.checksum_enabled", "1"):
        cli("up", "--netns", lab.client, "--cc", "uncoupled")
        cli("up", "--netns", lab.server, "--cc", "uncoupled")
        try:
            sent, _got = Background(lab, 8_000_000).result()
            with netns_entered(lab.server):
                dp = datapath.PinnedDatapath(lab.server)
                try:
                    subflows = [s for _k, s in dp.subflows.items() if s.dir[0].bytes > 0]
                    conns = [c for _k, c in dp.conns.items()]
                finally:
                    dp.close()
        finally:
            cli("down", "--netns", lab.server, check=False)
    carried = [s for s in sent["subflows"] if s["bytes_sent"] > 0]
    assert len(carried) == 2, "the transfer did not use both paths"
    assert len(subflows) == 2 and any(s.flags & abi.SubflowFlags.SF_JOIN for s in subflows)
    for s in subflows:
        kind = "join" if s.flags & abi.SubflowFlags.SF_JOIN else "initial"
        assert s.flags & abi.SubflowFlags.SF_CHECKSUM, f"the {kind} subflow was not checked"
        assert s.csum.verified > 0 and s.csum.bad == 0, (kind, s.csum.verified, s.csum.bad)
    # One connection, summed from both subflows.
    assert [c.flags & abi.SubflowFlags.SF_CHECKSUM for c in conns] == [abi.SubflowFlags.SF_CHECKSUM]
    assert conns[0].dir[0].bytes == sum(s.dir[0].bytes for s in subflows)


@contextlib.contextmanager
def sysctl_on_both(lab, name, value):
    old = [labmod.ns_exec(ns, ["sysctl", "-n", name], capture_output=True, text=True,
                          check=True).stdout.strip() for ns in (lab.client, lab.server)]
    try:
        for ns in (lab.client, lab.server):
            labmod.ns_exec(ns, ["sysctl", "-qw", f"{name}={value}"], check=True)
        yield
    finally:
        for ns, v in zip((lab.client, lab.server), old, strict=True):
            labmod.ns_exec(ns, ["sysctl", "-qw", f"{name}={v}"], check=False)
