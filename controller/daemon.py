"""The mptcpctl daemon: one event loop per network namespace running the kernel's userspace
path manager. It reacts to mptcp_pm events and rtnetlink changes by asking the policy what
the connections should look like and carrying that out; keeps the datapath attached to managed
interfaces; serves status on a root-only control socket; and on stop puts the namespace back
as it found it (sysctls, limits, programs, pins, files)."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import selectors
import signal
import time
from dataclasses import asdict
from pathlib import Path

from . import abi, control, datapath, dpevents, health, netns, policy, sysctl
from .config import DaemonConfig
from .errors import BadInput, MissingFeature, MptcpctlError
from .model import (
    Announce,
    Connection,
    CreateSubflow,
    DestroySubflow,
    NetState,
    PeerAddr,
    PolicyConfig,
    Remove,
    SetBackup,
    Subflow,
)

log = logging.getLogger("mptcpctl")

RUN_ROOT = datapath.RUN_ROOT
EVENT_LOG_LEN = 200
# Limits the daemon raises while it runs (the kernel maximum is 8 for both).
LIMITS = {"subflows": 8, "add_addr_accepted": 8}
# How often the Prometheus endpoint's values are refreshed from status(), seconds.
METRICS_PERIOD_S = 1.0
# At most one drain of the datapath's event ring per this many seconds: a flood of malformed
# packets on the wire fills the ring (the datapath counts what it drops), not a CPU here.
DP_EVENTS_PERIOD_S = 0.1


def run_dir(ns: str | None) -> Path:
    return RUN_ROOT / datapath.scope_name(ns)


def pidfile(ns: str | None) -> Path:
    return run_dir(ns) / "mptcpctl.pid"


def control_path(ns: str | None) -> Path:
    return run_dir(ns) / "control.sock"


def saved_path(ns: str | None) -> Path:
    return run_dir(ns) / "saved.json"


def running_pid(ns: str | None) -> int | None:
    """The pid of a live daemon for `ns`, or None (a stale pidfile counts as none)."""
    try:
        pid = int(pidfile(ns).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0:
        return None   # not a process (0 and -1 would mean our group, or every process)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return None
    except PermissionError:
        return pid
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"mptcpctl" in cmdline or b"cli.main" in cmdline else None


def check_features(ns: str | None, cfg: DaemonConfig) -> None:
    """Exit-code-3 checks: MPTCP on, userspace PM available, BPF loadable, cgroup v2."""
    if not sysctl.mptcp_enabled(ns):
        raise MissingFeature("MPTCP is disabled or missing (sysctl net.mptcp.enabled=1)")
    if cfg.pm == "userspace" and not sysctl.userspace_pm_available(ns):
        raise MissingFeature("this kernel has no userspace path manager (needs 5.19+)")
    if cfg.datapath or cfg.fix_dss_checksum:
        datapath.require_bpf()
    if not cgroup2_mount():
        raise MissingFeature("no cgroup v2 hierarchy is mounted")


def cgroup2_mount() -> str | None:
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return parts[1]
    return None


class Daemon:
    def __init__(self, cfg: DaemonConfig):
        self.cfg = cfg
        self.ns = cfg.netns
        self.policy = PolicyConfig(
            name=cfg.policy, backup_ifaces=frozenset(cfg.backup_ifaces),
            ndiffports=cfg.ndiffports, max_subflows=cfg.max_subflows, announce=cfg.announce,
        )
        self.net = NetState()
        self.conns: dict[int, Connection] = {}
        self.events = collections.deque(maxlen=EVENT_LOG_LEN)
        self.retries: dict[tuple, tuple[int, float]] = {}  # pair -> (attempts, not before)
        self.handover_from: dict[int, float] = {}          # token -> when it lost its last path
        self.saved: sysctl.SavedSysctls | None = None
        self.attachment: datapath.Attachment | None = None
        self.dp_events = None        # controller.dpevents.DatapathEvents with the datapath
        self.dp_log = dpevents.EventLog(time.monotonic)
        self.next_dp_events = None   # when the ring, drained, is watched again
        # (FlowKey, local token) the datapath is yet to learn: written once per loop turn.
        self.pending_tokens: list = []
        self.dssfix = None           # controller.dssfix.DssFix with cfg.fix_dss_checksum
        self.sockops = None
        self.coupler = None
        self.metrics = None          # controller.metrics.Metrics when cfg.metrics is set
        self.next_metrics = 0.0
        self.health: health.HealthMonitor | None = None   # hostile-network findings
        self.next_health = 0.0
        self.pm = self.pm_events = self.netmon = self.ctl = None
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self.started = time.time()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Everything up to serving; on failure, undo what was done and re-raise."""
        from . import netmon, pm

        pid = running_pid(self.ns)
        if pid:
            where = f"netns {self.ns}" if self.ns else "this namespace"
            raise MptcpctlError(f"mptcpctl is already running in {where} (pid {pid})")
        check_features(None, self.cfg)
        run_dir(self.ns).mkdir(parents=True, exist_ok=True)
        self._clean_stale()
        try:
            self.saved = sysctl.SavedSysctls(None)
            if self.cfg.pm == "userspace":
                name, value = sysctl.userspace_pm_sysctl(None)
                self.saved.set(name, value)
            self._persist_saved()
            self.pm = pm.MptcpPM()
            if self.cfg.pm == "userspace":
                self._raise_limits()
            self.pm_events = pm.PMEvents()
            self.netmon = netmon.NetMonitor(None, list(self.cfg.ifaces) or None,
                                            list(self.cfg.exclude))
            self._check_ifaces()
            if self.cfg.datapath:
                self.attachment = datapath.Attachment(self.ns)
                self.dp_events = dpevents.DatapathEvents(self.attachment.prog.map_fd("events"))
            if self.cfg.fix_dss_checksum:
                from .dssfix import DssFix

                self.dssfix = DssFix(self.ns)
            if self.cfg.cc != "uncoupled":
                from .coupling import Coupler
                from .sockops import SockOps

                self.sockops = SockOps(
                    self.ns, pin_to=datapath.pin_dir(self.ns),
                    on_loaded=lambda prog_id: self._save_extra(sockops_prog_id=prog_id))
                self.coupler = Coupler(self.cfg.cc, self.sockops)
            if self.cfg.metrics:
                from .metrics import Metrics, parse_listen

                self.metrics = Metrics(*parse_listen(self.cfg.metrics))
            self.health = health.HealthMonitor(self.ns)
            self.ctl = control.listen(str(control_path(self.ns)))
            pidfile(self.ns).write_text(f"{os.getpid()}\n")
            self.sel.register(self.pm_events, selectors.EVENT_READ, self._on_pm_readable)
            self.sel.register(self.netmon, selectors.EVENT_READ, self._on_net_readable)
            self.sel.register(self.ctl, selectors.EVENT_READ, self._on_control)
            if self.dp_events is not None:
                self.sel.register(self.dp_events, selectors.EVENT_READ, self._on_dp_events)
            self._refresh_net()
            self._adopt()
            self._note("started", f"pm={self.cfg.pm} policy={self.cfg.policy}")
        except BaseException:
            self.stop()
            raise

    def _clean_stale(self) -> None:
        """A crashed daemon (SIGKILL) left pins, programs, sysctls: put them back first."""
        stale = saved_path(self.ns)
        if stale.exists():
            undo_saved(stale.read_text(errors="replace"))
            log.info("restored what a previous daemon had changed")
            stale.unlink(missing_ok=True)
        if datapath.is_attached(self.ns):
            datapath.detach(self.ns)
            log.info("removed a stale datapath (pins and programs of a previous daemon)")
        from . import dssfix

        if dssfix.detach_stale(self.ns):
            log.info("removed a stale DSS checksum fix (tc filters of a previous daemon)")

    def _persist_saved(self) -> None:
        saved_path(self.ns).write_text(self.saved.to_json())

    def _save_extra(self, **fields) -> None:
        """Add to saved.json what a later clean-up must undo (limits, our sockops program)."""
        data = json.loads(saved_path(self.ns).read_text())
        data.update(fields)
        saved_path(self.ns).write_text(json.dumps(data))

    def _raise_limits(self) -> None:
        try:
            old = self.pm.get_limits()
            self.saved_limits = {"subflows": old.subflows,
                                 "add_addr_accepted": old.add_addr_accepted}
            self.pm.set_limits(**LIMITS)
        except MptcpctlError as e:
            self.saved_limits = None
            log.warning("could not raise MPTCP limits: %s", e)
        self._save_extra(limits=self.saved_limits)

    def _check_ifaces(self) -> None:
        known = {name for name, _idx, _up in self.netmon.interfaces()}
        for name in (*self.cfg.ifaces, *self.cfg.exclude, *self.cfg.backup_ifaces):
            if name not in known:
                where = f" in netns {self.ns}" if self.ns else ""
                raise BadInput(f"no interface named {name!r}{where}")

    def stop(self) -> None:
        """Restore everything; safe to call on a half-started daemon, and twice."""
        for obj in (self.ctl, self.pm_events, self.netmon, self.dp_events):
            if obj is not None:
                with contextlib.suppress(Exception):
                    self.sel.unregister(obj)
                with contextlib.suppress(Exception):
                    obj.close()
        self.ctl = self.pm_events = self.netmon = self.dp_events = None
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                self.metrics.close()
            self.metrics = None
        if self.sockops is not None:
            with contextlib.suppress(Exception):
                self.coupler.lift()
            with contextlib.suppress(Exception):
                self.sockops.close()
            self.sockops = self.coupler = None
        if self.attachment is not None:
            with contextlib.suppress(Exception):
                self.attachment.close()
            self.attachment = None
        # After the datapath: whichever of the two added a shared clsact qdisc, it goes.
        if self.dssfix is not None:
            with contextlib.suppress(Exception):
                self.dssfix.close()
            self.dssfix = None
        if getattr(self, "_ipr", None) is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None
        if self.pm is not None:
            if getattr(self, "saved_limits", None):
                with contextlib.suppress(Exception):
                    self.pm.set_limits(**self.saved_limits)
            with contextlib.suppress(Exception):
                self.pm.close()
            self.pm = None
        if self.saved is not None:
            with contextlib.suppress(Exception):
                self.saved.restore()
            self.saved = None
        for path in (control_path(self.ns), pidfile(self.ns), saved_path(self.ns)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        remove_run_dirs(self.ns)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._request_stop())
        signal.signal(signal.SIGINT, lambda *_: self._request_stop())
        try:
            while not self.stopping:
                timeout = self._next_timer()
                for key, _ in self.sel.select(timeout):
                    try:
                        key.data()
                    except MptcpctlError as e:
                        log.warning("%s", e)
                self._flush_tokens()
                self._run_timers()
        finally:
            self.stop()

    def _request_stop(self) -> None:
        self.stopping = True

    # --- inputs ------------------------------------------------------------------------

    def _on_pm_readable(self) -> None:
        for ev in self.pm_events.read(0):
            self.handle_pm_event(ev)
        if self.pm_events.overflowed:
            self.pm_events.overflowed = False
            self._note("resync", "events were lost: rebuilding from the kernel's connections")
            self._resync()

    def _on_net_readable(self) -> None:
        changes = self.netmon.read()
        if not changes:
            return
        for ch in changes:
            # Route churn and link-local addresses are noise in the event log.
            if not ch.kind.startswith("route") and not (ch.addr or "").startswith("fe80:"):
                self._note(ch.kind, f"{ch.ifname or ''} {ch.addr or ''}".strip())
            if ch.kind in ("addr_added", "link_up", "route_added"):
                # A network change is a new chance for subflows that gave up.
                self.retries.clear()
        self._refresh_net()

    def _on_dp_events(self) -> None:
        """What the datapath saw on the wire that people should hear of (dpevents.describe),
        once per subflow and kind; a DSS checksum mismatch is a health finding at once. Then
        the ring rests for DP_EVENTS_PERIOD_S (the timer watches it again)."""
        self.sel.unregister(self.dp_events)
        self.next_dp_events = time.monotonic() + DP_EVENTS_PERIOD_S
        for ev in self.dp_events.read():
            if ev.type not in dpevents.LOGGED:
                continue
            iface = dpevents.ifname(ev.ifindex)
            said = dpevents.describe(ev, iface)
            if said is None:
                continue
            kind, detail = said
            flow = dpevents.flow_of(ev)
            if not self.dp_log.admit(kind, flow):
                continue
            token = self._token_at(flow)
            self._note(kind, detail if token is None else f"token={token:08x} {detail}")
            if ev.type == abi.EventType.EV_DSS_CSUM_BAD and self.health is not None:
                for finding in self.health.payload_modified(flow, iface, 1):
                    self._note("health", finding.detail)

    def _token_at(self, flow) -> int | None:
        for conn in self.conns.values():
            if self._find_subflow(conn, *flow) is not None:
                return conn.token
        return None

    def _refresh_net(self) -> None:
        self.net.update(self.netmon.snapshot())
        self._sync_dssfix()
        if self.attachment is not None:
            up = {name for name, _idx, is_up in self.netmon.interfaces() if is_up}
            managed = {a.ifname for a in self.net.addrs.values()} | (up & set(self.cfg.ifaces))
            for name in sorted(managed - set(self.attachment.ifaces)):
                try:
                    self.attachment.add(name)
                    self._note("datapath", f"attached to {name}")
                except MptcpctlError as e:
                    log.warning("datapath on %s: %s", name, e)
            present = {name for name, _idx, _up in self.netmon.interfaces()}
            for name in set(self.attachment.ifaces) - present:
                self.attachment.forget(name)
        self.reconcile()

    def _sync_dssfix(self) -> None:
        """The DSS checksum fix on every up, managed interface: a gateway forwards between
        them all, and the fix acts where segments leave."""
        if self.dssfix is None:
            return
        present = set()
        for name, _idx, is_up in self.netmon.interfaces():
            present.add(name)
            if is_up and name not in self.dssfix.ifaces:
                try:
                    self.dssfix.add(name)
                    self._note("dss_fix", f"attached to {name}")
                except MptcpctlError as e:
                    log.warning("DSS checksum fix on %s: %s", name, e)
        for name in set(self.dssfix.ifaces) - present:
            self.dssfix.forget(name)

    def handle_pm_event(self, ev) -> None:
        """mptcpd's flat dispatch: one handler per event type; each checks what it needs."""
        handler = getattr(self, f"_ev_{ev.type}", None)
        detail = " ".join(f"{k}={v}" for k, v in (
            ("token", f"{ev.token:08x}" if ev.token is not None else None),
            ("src", f"{ev.saddr}:{ev.sport}" if ev.saddr else None),
            ("dst", f"{ev.daddr}:{ev.dport}" if ev.daddr else None),
            ("error", ev.error or None)) if v)
        self._note(ev.type, detail)
        if handler is None:
            return
        if ev.token is None and ev.type not in ("listener_created", "listener_closed"):
            log.warning("%s event without a token: ignored", ev.type)
            return
        handler(ev)

    def _ev_created(self, ev) -> None:
        if None in (ev.saddr, ev.daddr, ev.sport, ev.dport):
            log.warning("created event without addresses: ignored")
            return
        self.conns[ev.token] = Connection(
            token=ev.token, family=ev.family or (6 if ":" in ev.saddr else 4),
            local=ev.saddr, lport=ev.sport, remote=ev.daddr, rport=ev.dport,
            server_side=bool(ev.server_side), deny_join_id0=bool(ev.deny_join_id0),
            created_ns=time.monotonic_ns(),
        )
        self._token_of(ev.token, ev.saddr, ev.sport, ev.daddr, ev.dport)

    def _ev_established(self, ev) -> None:
        conn = self.conns.get(ev.token)
        if conn is None:
            self._ev_created(ev)
            conn = self.conns.get(ev.token)
            if conn is None:
                return
        conn.established = True
        if ev.deny_join_id0 is not None:
            conn.deny_join_id0 = bool(ev.deny_join_id0)
        if not any(s.local == conn.local and s.lport == conn.lport for s in conn.subflows):
            conn.subflows.append(Subflow(conn.local, conn.lport, conn.remote, conn.rport,
                                         loc_id=0, rem_id=0))
        self.reconcile(conn)

    def _ev_closed(self, ev) -> None:
        self.conns.pop(ev.token, None)
        self.handover_from.pop(ev.token, None)
        for pair in [p for p in self.retries if p[0] == ev.token]:
            del self.retries[pair]

    def _ev_announced(self, ev) -> None:
        conn = self.conns.get(ev.token)
        if conn is None or ev.daddr is None or ev.rem_id is None:
            return
        conn.peer_addrs = [p for p in conn.peer_addrs if p.id != ev.rem_id]
        conn.peer_addrs.append(PeerAddr(ev.daddr, ev.dport or 0, ev.rem_id))
        self.reconcile(conn)

    def _ev_removed(self, ev) -> None:
        conn = self.conns.get(ev.token)
        if conn is None or ev.rem_id is None:
            return
        conn.peer_addrs = [p for p in conn.peer_addrs if p.id != ev.rem_id]
        self.reconcile(conn)

    def _ev_sub_established(self, ev) -> None:
        conn = self.conns.get(ev.token)
        if conn is None or None in (ev.saddr, ev.daddr):
            return
        sf = self._find_subflow(conn, ev.saddr, ev.sport, ev.daddr, ev.dport)
        if sf is None:
            sf = Subflow(ev.saddr, ev.sport, ev.daddr, ev.dport)
            conn.subflows.append(sf)
        sf.lport, sf.established = ev.sport, True
        self._token_of(conn.token, ev.saddr, ev.sport, ev.daddr, ev.dport)
        sf.loc_id, sf.rem_id = ev.loc_id, ev.rem_id
        sf.backup = bool(ev.backup)
        sf.ifindex = ev.if_idx
        self.retries.pop((conn.token, ev.saddr, ev.daddr, ev.dport), None)
        lost = self.handover_from.pop(conn.token, None)
        if lost is not None:
            self._note("handover", f"token={conn.token:08x} via {ev.saddr} "
                       f"stall={(time.monotonic() - lost) * 1000:.0f}ms")

    def _ev_sub_closed(self, ev) -> None:
        conn = self.conns.get(ev.token)
        if conn is None or None in (ev.saddr, ev.daddr):
            return
        sf = self._find_subflow(conn, ev.saddr, ev.sport, ev.daddr, ev.dport)
        if sf is not None:
            conn.subflows.remove(sf)
        if not any(s.established for s in conn.subflows):
            self.handover_from.setdefault(conn.token, time.monotonic())
        if ev.saddr in self.net.addrs:
            # Still wanted: try again later, not at once (no busy loop on a dead path).
            self._backoff((conn.token, ev.saddr, ev.daddr, ev.dport))
        self.reconcile(conn)

    def _ev_sub_priority(self, ev) -> None:
        conn = self.conns.get(ev.token)
        if conn is None:
            return
        sf = self._find_subflow(conn, ev.saddr, ev.sport, ev.daddr, ev.dport)
        if sf is not None:
            sf.backup = bool(ev.backup)

    def _token_of(self, token: int, saddr, sport, daddr, dport) -> None:
        """The datapath sums a subflow into its connection once it knows the local token,
        which the path manager's events give us for every subflow (the wire shows it only in
        an incoming MP_JOIN SYN)."""
        if self.attachment is None or None in (saddr, sport, daddr, dport):
            return
        try:
            self.pending_tokens.append((abi.flow_key(saddr, sport, daddr, dport), token))
        except ValueError:
            log.warning("subflow %s:%s -> %s:%s: not an address pair", saddr, sport, daddr, dport)

    def _flush_tokens(self) -> None:
        if not self.pending_tokens or self.attachment is None:
            return
        tokens, self.pending_tokens = self.pending_tokens, []
        try:
            self.attachment.set_tokens(tokens)
        except MptcpctlError as e:
            log.warning("datapath tokens: %s", e)

    @staticmethod
    def _find_subflow(conn, saddr, sport, daddr, dport):
        for sf in conn.subflows:
            if sf.local == saddr and sf.remote == daddr and sf.rport == dport and (
                    not sport or not sf.lport or sf.lport == sport):
                return sf
        return None

    # --- decisions and actions -----------------------------------------------------------

    def reconcile(self, conn: Connection | None = None) -> None:
        if self.cfg.pm != "userspace" or self.pm is None:
            return
        conns = [conn] if conn is not None else list(self.conns.values())
        now = time.monotonic()
        for c in conns:
            for action in policy.plan(c, self.net, self.policy):
                if isinstance(action, CreateSubflow):
                    pair = (action.token, action.local, action.remote, action.rport)
                    attempts, not_before = self.retries.get(pair, (0, 0.0))
                    if now < not_before or attempts >= self.cfg.retry_attempts:
                        continue
                self.execute(c, action)

    def execute(self, conn: Connection, action) -> None:
        try:
            if isinstance(action, CreateSubflow):
                if not self._route_ready(action.local, action.remote, action.ifindex):
                    # A join sent now would leave by the wrong interface or nowhere and take
                    # seconds to fail; the route's netlink event will bring us back at once.
                    raise MptcpctlError(f"no route from {action.local} to {action.remote} "
                                        "out of its interface yet")
                self.pm.subflow_create(action.token, action.local, action.loc_id, action.remote,
                                       action.rport, ifindex=action.ifindex,
                                       backup=action.backup)
                conn.subflows.append(Subflow(action.local, 0, action.remote, action.rport,
                                             loc_id=action.loc_id, backup=action.backup,
                                             ifindex=action.ifindex, established=False))
                self._note("subflow_create", f"token={action.token:08x} {action.local} -> "
                           f"{action.remote}:{action.rport}" + (" backup" if action.backup else ""))
            elif isinstance(action, DestroySubflow):
                self._forget_subflow(conn, action)
                if not any(s.established for s in conn.subflows):
                    self.handover_from.setdefault(conn.token, time.monotonic())
                self.pm.subflow_destroy(action.token, action.local, action.lport, action.remote,
                                        action.rport)
                self._note("subflow_destroy", f"token={action.token:08x} {action.local}:"
                           f"{action.lport} -> {action.remote}:{action.rport}")
            elif isinstance(action, Announce):
                self.pm.announce(action.token, action.addr, action.loc_id,
                                 ifindex=action.ifindex)
                conn.announced[action.loc_id] = action.addr
                self._note("announce", f"token={action.token:08x} {action.addr} "
                           f"id={action.loc_id}")
            elif isinstance(action, Remove):
                conn.announced.pop(action.loc_id, None)
                self.pm.remove(action.token, action.loc_id)
                self._note("remove", f"token={action.token:08x} id={action.loc_id}")
            elif isinstance(action, SetBackup):
                self.pm.set_flags(action.token, action.local, action.lport, action.remote,
                                  action.rport, action.backup)
                for sf in conn.subflows:
                    if (sf.local, sf.lport) == (action.local, action.lport):
                        sf.backup = action.backup
                self._note("set_backup", f"token={action.token:08x} {action.local}:"
                           f"{action.lport} backup={action.backup}")
        except MptcpctlError as e:
            log.info("%s failed: %s", type(action).__name__, e)
            self._note("failed", f"{type(action).__name__}: {e}")
            if isinstance(action, CreateSubflow):
                self._forget_subflow(conn, action)
                self._backoff((action.token, action.local, action.remote, action.rport))

    def _route_ready(self, local: str, remote: str, ifindex: int | None) -> bool:
        """Would a packet from `local` to `remote` leave by `local`'s interface (the one the
        subflow is bound to)? Source-address rules included, as the kernel will route it."""
        if not ifindex:
            return True
        try:
            if getattr(self, "_ipr", None) is None:
                from pyroute2 import IPRoute

                self._ipr = IPRoute()
            routes = self._ipr.route("get", dst=remote, src=local)
        except Exception:
            return False
        return bool(routes) and routes[0].get_attr("RTA_OIF") == ifindex

    @staticmethod
    def _forget_subflow(conn, action) -> None:
        lport = getattr(action, "lport", None)
        conn.subflows = [s for s in conn.subflows if not (
            s.local == action.local and s.remote == action.remote and s.rport == action.rport
            and (lport is None or not s.lport or s.lport == lport))]

    def _backoff(self, pair) -> None:
        attempts, _ = self.retries.get(pair, (0, 0.0))
        delay = policy.backoff_delay(attempts, self.cfg.retry_base_ms / 1000,
                                     self.cfg.retry_max_ms / 1000)
        self.retries[pair] = (attempts + 1, time.monotonic() + delay)

    def _next_timer(self) -> float | None:
        now = time.monotonic()
        due = [nb for att, nb in self.retries.values() if att < self.cfg.retry_attempts]
        if self.metrics is not None:
            due.append(self.next_metrics)
        if self.health is not None:
            due.append(self.next_health)
        if self.next_dp_events is not None:
            due.append(self.next_dp_events)
        return max(0.0, min(due) - now) if due else 1.0

    def _run_timers(self) -> None:
        now = time.monotonic()
        if self.next_dp_events is not None and now >= self.next_dp_events:
            self.next_dp_events = None
            if self.dp_events is not None:
                self.sel.register(self.dp_events, selectors.EVENT_READ, self._on_dp_events)
        if self.metrics is not None and now >= self.next_metrics:
            self.next_metrics = now + METRICS_PERIOD_S
            try:
                self.metrics.update(self.status())
            except Exception as e:  # a scrape source must never stop the path manager
                log.warning("metrics: %s", e)
        if self.health is not None and now >= self.next_health:
            self.next_health = now + health.PERIOD_S
            for finding in self.health.tick(self):
                self._note("health", finding.detail)
        if any(nb <= now and att < self.cfg.retry_attempts
               for att, nb in self.retries.values()):
            self.reconcile()

    # --- adoption ------------------------------------------------------------------------

    def _resync(self) -> None:
        """After lost events: forget connections the kernel no longer has, adopt the ones we
        never heard of (and give them their subflows)."""
        from . import diag

        try:
            live = {c.token for c in diag.connections(None)}
        except Exception as e:
            log.warning("resync: %s", e)
            return
        for token in [t for t in self.conns if t not in live]:
            self.conns.pop(token, None)
            for pair in [p for p in self.retries if p[0] == token]:
                del self.retries[pair]
        self._adopt()

    def _adopt(self) -> None:
        """Connections that lived before we started (a restart after a crash) join our view."""
        from . import diag

        try:
            conns = diag.connections(None)
            subflows = diag.subflows(None)
        except Exception as e:  # ss missing or unparsable: carry on without history
            log.warning("could not list existing MPTCP connections: %s", e)
            return
        for c in conns:
            if c.token is None or c.token in self.conns:
                continue   # no token: nothing the path manager could address it by
            conn = Connection(token=c.token, family=c.family, local=c.local, lport=c.lport,
                              remote=c.remote, rport=c.rport, established=True,
                              server_side=bool(getattr(c, "server_side", False)))
            for s in subflows:
                if s.token == c.token:
                    conn.subflows.append(Subflow(s.local, s.lport, s.remote, s.rport,
                                                 loc_id=s.loc_id, rem_id=s.rem_id,
                                                 backup=bool(s.backup)))
                    self._token_of(c.token, s.local, s.lport, s.remote, s.rport)
            self.conns[c.token] = conn
            self._note("adopted", f"token={c.token:08x} {c.local}:{c.lport} -> "
                       f"{c.remote}:{c.rport} subflows={len(conn.subflows)}")
        self.reconcile()

    # --- control socket ------------------------------------------------------------------

    def _note(self, kind: str, detail: str = "") -> None:
        self.events.append({"t": time.time(), "event": kind, "detail": detail})
        log.info("%s %s", kind, detail)

    def _on_control(self) -> None:
        try:
            conn, _ = self.ctl.accept()
        except BlockingIOError:
            return
        with conn:
            try:
                if control.peer_uid(conn) != 0:
                    control.send(conn, {"error": "permission denied: the control socket is "
                                                 "root-only"})
                    return
                req = control.read_request(conn)
                control.send(conn, self.answer(req))
            except (TimeoutError, ValueError, OSError) as e:
                with contextlib.suppress(OSError):
                    control.send(conn, {"error": f"bad request: {e}"})

    def answer(self, req: dict) -> dict:
        cmd = req["cmd"]
        if cmd == "status":
            return self.status()
        if cmd == "events":
            try:
                since = float(req.get("since", 0) or 0)
            except (TypeError, ValueError):
                return {"error": "since must be a number of seconds"}
            return {"events": [e for e in self.events if e["t"] > since]}
        if cmd == "subflows":
            return {"cc": self.cfg.cc, "pm": self.cfg.pm, "subflows": [
                {"token": f"{c.token:08x}", "local": s.local, "lport": s.lport,
                 "remote": s.remote, "rport": s.rport, "backup": s.backup,
                 "established": s.established}
                for c in self.conns.values() for s in c.subflows]}
        if cmd == "shutdown":
            self._request_stop()
            return {"ok": True}
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid()}
        return {"error": f"unknown command {cmd!r} (status, events, subflows, shutdown, ping)"}

    def status(self) -> dict:
        from . import diag

        kernel = {}
        with contextlib.suppress(Exception):
            for s in diag.subflows(None):
                kernel[(s.local, s.lport, s.remote, s.rport)] = s
        ccview = {}
        if self.coupler is not None:
            with contextlib.suppress(Exception):
                ccview = self.coupler.view()
        dp = {}
        counters = {}
        if self.attachment is not None:
            with contextlib.suppress(Exception):
                from . import view

                pinned = datapath.PinnedDatapath(self.ns)
                try:
                    for sf in view.snapshot(pinned):
                        dp[sf.key] = sf
                    counters = pinned.counter_values()
                finally:
                    pinned.close()
        now = time.monotonic_ns()
        conns = []
        for c in self.conns.values():
            subflows = []
            for s in c.subflows:
                key = (s.local, s.lport, s.remote, s.rport)
                k, d = kernel.get(key), dp.get(key)
                cv = {}
                if s.lport:
                    cv = ccview.get(bytes(abi.flow_key(*key)), {})
                subflows.append({
                    "local": s.local, "lport": s.lport, "remote": s.remote, "rport": s.rport,
                    "loc_id": s.loc_id, "rem_id": s.rem_id, "backup": s.backup,
                    "established": s.established,
                    "iface": d.iface if d else None,
                    "bytes_out": d.bytes_out if d else None,
                    "bytes_in": d.bytes_in if d else None,
                    "rtt_ms": getattr(k, "rtt_ms", None),
                    "cwnd": cv.get("cwnd", getattr(k, "cwnd", None)),
                    "clamp": cv.get("clamp"),
                    "coupled_window": cv.get("coupled_window"),
                    "losses": cv.get("losses"),
                    "merged_losses": cv.get("merged_losses"),
                    "sndbuf": cv.get("sndbuf"),
                    "bytes_sent": getattr(k, "bytes_sent", None),
                    "bytes_received": getattr(k, "bytes_received", None),
                })
            conns.append({
                "token": f"{c.token:08x}", "family": c.family,
                "local": c.local, "lport": c.lport, "remote": c.remote, "rport": c.rport,
                "side": "server" if c.server_side else "client",
                "state": "established" if c.established else "connecting",
                "age_s": round((now - c.created_ns) / 1e9, 1) if c.created_ns else None,
                "peer_addrs": [asdict(p) for p in c.peer_addrs],
                "announced": {str(k): v for k, v in c.announced.items()},
                "subflows": subflows,
            })
        return {
            "pid": os.getpid(), "netns": self.ns, "uptime_s": round(time.time() - self.started),
            "pm": self.cfg.pm, "cc": self.cfg.cc, "policy": {
                "name": self.policy.name, "backup_ifaces": sorted(self.policy.backup_ifaces),
                "ndiffports": self.policy.ndiffports, "max_subflows": self.policy.max_subflows,
            },
            "limits": LIMITS if getattr(self, "saved_limits", None) else None,
            "local_addrs": [asdict(a) for a in self.net.addrs.values()],
            "datapath": {"ifaces": self.attachment.ifaces if self.attachment else [],
                         "counters": counters},
            "connections": conns,
            "dss_fix": self._dssfix_view(),
            "health": self.health.view() if self.health is not None else [],
            "events": list(self.events)[-50:],
        }


    def _dssfix_view(self) -> dict | None:
        """What the DSS checksum fix did (None when it is off)."""
        if self.dssfix is None:
            return None
        try:
            return self.dssfix.view()
        except Exception as e:  # a map read must never break status
            return {"error": str(e)}


def serve(cfg: DaemonConfig, ready_fd: int | None = None) -> None:
    """Enter the namespace for good, start, tell the parent (ready_fd), run until stopped."""
    if cfg.netns:
        if not netns.exists(cfg.netns):
            raise BadInput(f"no network namespace named {cfg.netns!r} (see `ip netns list`)")
        netns.enter_for_good(cfg.netns)
    d = Daemon(cfg)
    try:
        d.start()
    except MptcpctlError as e:
        if ready_fd is not None:
            _tell(ready_fd, {"ok": False, "error": str(e), "code": e.exit_code})
        raise
    if ready_fd is not None:
        _tell(ready_fd, {"ok": True, "pid": os.getpid()})
    d.run()


def _tell(fd: int, obj: dict) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(obj).encode() + b"\n")
        os.close(fd)


def stop_running(ns: str | None, timeout: float = 10.0) -> str:
    """`mptcpctl down`: stop a live daemon and wait for it; or clean up after a dead one."""
    pid = running_pid(ns)
    if pid:
        try:
            control.request(str(control_path(ns)), "shutdown")
        except MptcpctlError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if running_pid(ns) is None:
                return "stopped"
            time.sleep(0.05)
        raise MptcpctlError(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s")
    # No daemon: undo what a crashed one left behind. When its namespace is gone too, so are
    # its sysctls and interfaces: only files and pins remain.
    cleaned = False
    stale = saved_path(ns)
    if stale.exists():
        text = stale.read_text(errors="replace")   # undo_saved() copes with a corrupt file
        if ns and not netns.exists(ns):
            # The sockops program hangs on the cgroup, not the namespace: it outlives both.
            detach_saved_sockops(text)
        else:
            with netns.entered(ns):
                undo_saved(text)
        cleaned = True
    if datapath.is_attached(ns):  # detach() copes with a namespace that is gone
        datapath.detach(ns)
        cleaned = True
    from . import dssfix

    if dssfix.detach_stale(ns):  # copes with a namespace that is gone, too
        cleaned = True
    for path in (control_path(ns), pidfile(ns), saved_path(ns)):
        if path.exists():
            path.unlink()
            cleaned = True
    remove_run_dirs(ns)
    return "cleaned" if cleaned else "not running"


def undo_saved(text: str) -> None:
    """Put back what saved.json says a daemon changed, in the namespace we are in: sysctls,
    MPTCP limits, and detach its sockops program (which outlives a SIGKILL)."""
    try:
        data = json.loads(text or "{}")
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        log.warning("saved.json is unreadable; nothing restored")
        return
    with contextlib.suppress(MptcpctlError):
        sysctl.SavedSysctls.from_json(json.dumps(data)).restore()
    if data.get("limits"):
        with contextlib.suppress(Exception):
            from . import pm

            with pm.MptcpPM() as p:
                p.set_limits(**data["limits"])
    detach_saved_sockops(text)


def detach_saved_sockops(text: str) -> None:
    """Detach the sockops program whose id a daemon saved (it survives a SIGKILL)."""
    with contextlib.suppress(Exception):
        prog_id = json.loads(text or "{}").get("sockops_prog_id")
        if prog_id:
            from . import sockops

            sockops.detach_by_id(int(prog_id))


def remove_run_dirs(ns: str | None) -> None:
    """/run/mptcpctl/<ns>/ and /run/mptcpctl/ when nothing else lives there."""
    for d in (run_dir(ns), RUN_ROOT):
        with contextlib.suppress(OSError):
            d.rmdir()

