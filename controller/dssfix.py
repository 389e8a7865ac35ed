"""The opt-in DSS checksum fix (`mptcpctl up --fix-dss-checksum`, docs/dssfix.md): loads
bpf/mptcp_dssfix.c, attaches it at tc egress of a gateway's interfaces, reads its counts for
`status --json`, and detaches it (also after a crash, from its state file)."""

from __future__ import annotations

import contextlib
import ctypes as C
import json
from pathlib import Path

from . import abi, datapath
from .bpfload import BPF
from .errors import BadInput, DatapathError
from .libbpf import PinnedMap, test_run

SOURCE = datapath.BPF_DIR / "mptcp_dssfix.c"
# Our tc egress filter's priority and handle: not the datapath's (0xC0DE), so each side
# removes only its own; a lower number, so ours runs first and passes the packet on (it
# returns TC_ACT_UNSPEC): the datapath's filter returns TC_ACT_OK, which ends the chain.
TC_PRIO = 0xC0D0
TC_HANDLE = 0xD55F
TC_EGRESS_PARENT = datapath.TC_EGRESS_PARENT
TC_INGRESS_PARENT = 0xFFFFFFF2
# dssfix_counters slots, in the order of enum dssfix_counter (bpf/mptcp_dssfix.c): update both.
COUNTERS = ("checked", "ok", "fixed", "fixed_partial", "corrupt", "spanning", "skipped")
# The program's verdict for every packet: "no opinion, next filter" (passes at the end).
TC_ACT_UNSPEC = 0xFFFFFFFF  # -1 as test-run's unsigned retval


class DssFixFlow(C.Structure):
    """struct dssfix_flow (bpf/mptcp_dssfix.c): update both."""

    _fields_ = [("checked", C.c_uint64), ("fixed", C.c_uint64), ("corrupt", C.c_uint64),
                ("spanning", C.c_uint64)]


def state_file(ns: str | None) -> Path:
    return datapath.RUN_ROOT / datapath.scope_name(ns) / "dssfix.json"


class Program:
    """One compiled, loaded instance of mptcp_dssfix and its (private, unpinned) maps."""

    def __init__(self, cflags: list[str] | None = None):
        self.bpf = datapath.compile_bpf(SOURCE, cflags, progs={"mptcp_dssfix": BPF.SCHED_CLS})
        self.fn = self.bpf.load_func(b"mptcp_dssfix", BPF.SCHED_CLS)

    def _counter_map(self) -> PinnedMap:
        return PinnedMap(self.bpf[b"dssfix_counters"].map_fd, C.c_uint32, C.c_uint64,
                         percpu=True)

    def _flow_map(self) -> PinnedMap:
        return PinnedMap(self.bpf[b"dssfix_flows"].map_fd, abi.FlowKey, DssFixFlow)

    def run(self, frame: bytes) -> tuple[int, bytes]:
        """(verdict, frame as the program left it) for one frame, by test-run."""
        if len(frame) < datapath.ETH_HLEN:
            raise BadInput(f"a {len(frame)}-byte frame is shorter than an Ethernet header")
        verdict, _ns, out = test_run(self.fn.fd, frame, 1, out_size=len(frame) + 256)
        return verdict, out

    def counters(self) -> dict[str, int]:
        m = self._counter_map()
        out = {}
        for i, name in enumerate(COUNTERS):
            vals = m.lookup(C.c_uint32(i))
            out[name] = sum(int(getattr(v, "value", v)) for v in vals) if vals else 0
        return out

    def flows(self) -> list[dict]:
        """Per subflow direction: src -> dst as the segments travelled, and the counts."""
        m = self._flow_map()
        out = []
        for key, val in m.items():
            src, dst = _endpoint(key, key.laddr, key.lport), _endpoint(key, key.raddr, key.rport)
            out.append({"src": src, "dst": dst, "checked": val.checked, "fixed": val.fixed,
                        "corrupt": val.corrupt, "spanning": val.spanning})
        return sorted(out, key=lambda f: (f["src"], f["dst"]))

    def reset(self) -> None:
        """Every count back to zero (tests)."""
        counters = self._counter_map()
        for i in range(len(COUNTERS)):
            counters.update(C.c_uint32(i), (C.c_uint64 * counters.ncpus)())
        flows = self._flow_map()
        for key in flows.keys():
            flows.delete(key)

    def close(self) -> None:
        self.bpf.close()


def _endpoint(key, addr, port_be) -> str:
    import ipaddress
    import socket

    raw = bytes(addr)
    ip = ipaddress.ip_address(raw[:4] if key.family == 4 else raw)
    port = socket.ntohs(port_be)
    return f"{ip}:{port}" if key.family == 4 else f"[{ip}]:{port}"


class DssFix:
    """The fix attached at tc egress of a set of interfaces that can grow (the daemon adds them
    as they come up). Create and use it inside the namespace it serves; the state file names
    what to remove should the daemon die. close() detaches everything."""

    def __init__(self, ns: str | None = None):
        from pyroute2 import IPRoute

        self.ns = ns
        self.ipr = IPRoute()
        self.attached: list[dict] = []   # {"name", "ifindex", "added_clsact"}
        self.prog = None
        try:
            self.prog = Program()
        except BaseException:
            self.ipr.close()
            raise

    @property
    def ifaces(self) -> list[str]:
        return [a["name"] for a in self.attached]

    def _save(self) -> None:
        path = state_file(self.ns)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"netns": self.ns, "ifaces": self.attached}))

    def add(self, name: str) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        if name in self.ifaces:
            return
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            raise BadInput(f"no interface named {name!r}")
        idx = found[0]
        added = False
        try:
            self.ipr.tc("add", "clsact", idx)
            added = True
        except NetlinkError as e:
            if e.code != 17:  # EEXIST: someone's clsact (the datapath's, the user's): share it
                raise DatapathError(f"adding clsact to {name} failed: {e}") from e
        st = {"name": name, "ifindex": idx, "added_clsact": added}
        # Recorded before the filter goes on, so a crash in between leaves nothing unnamed.
        self.attached.append(st)
        self._save()
        try:
            self.ipr.tc("add-filter", "bpf", idx, handle=TC_HANDLE, fd=self.prog.fn.fd,
                        name="mptcpctl_dssfix", parent=TC_EGRESS_PARENT, prio=TC_PRIO,
                        classid=1, direct_action=True)
        except NetlinkError as e:
            _detach_one(self.ipr, st)
            self.attached.remove(st)
            self._save()
            raise DatapathError(f"attaching the DSS checksum fix to {name} failed: {e}") from e

    def forget(self, name: str) -> None:
        """The interface vanished, and our filter with it."""
        self.attached = [a for a in self.attached if a["name"] != name]
        self._save()

    def view(self) -> dict:
        return {"ifaces": self.ifaces, "counters": self.prog.counters(),
                "subflows": self.prog.flows()}

    def close(self) -> None:
        for st in reversed(self.attached):
            _detach_one(self.ipr, st)
        self.attached = []
        with contextlib.suppress(FileNotFoundError):
            state_file(self.ns).unlink()
        if self.prog is not None:
            self.prog.close()
            self.prog = None
        self.ipr.close()


def _detach_one(ipr, st: dict) -> None:
    """Our filter off the interface; the clsact qdisc too if we added it and nobody else's
    filter sits on it."""
    from pyroute2.netlink.exceptions import NetlinkError

    idx = st["ifindex"]
    if not ipr.link_lookup(ifname=st["name"]):
        return
    with contextlib.suppress(NetlinkError):
        ipr.tc("del-filter", "bpf", idx, handle=TC_HANDLE, parent=TC_EGRESS_PARENT, prio=TC_PRIO)
    if st.get("added_clsact"):
        with contextlib.suppress(NetlinkError):
            others = [*ipr.get_filters(index=idx, parent=TC_EGRESS_PARENT),
                      *ipr.get_filters(index=idx, parent=TC_INGRESS_PARENT)]
            if not others:
                ipr.tc("del", "clsact", idx)


def is_attached(ns: str | None) -> bool:
    return state_file(ns).exists()


def detach_stale(ns: str | None) -> bool:
    """What a dead daemon's fix left (its filters, our clsact qdiscs, the state file): removed.
    Run inside `ns`, or with `ns` gone (then only the file is left). True if anything was."""
    path = state_file(ns)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (ValueError, RecursionError):
        data = {}
    ifaces = data.get("ifaces") if isinstance(data, dict) else None
    if not isinstance(ifaces, list):
        ifaces = []   # corrupt: the filters it named stay attached
    from . import netns

    if not (ns and not netns.exists(ns)):
        from pyroute2 import IPRoute

        with netns.entered(ns), IPRoute() as ipr:
            for st in reversed(ifaces):
                with contextlib.suppress(Exception):
                    _detach_one(ipr, st)
    path.unlink(missing_ok=True)
    return True
