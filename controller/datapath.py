"""The BPF datapath from Python: compile and load bpf/mptcp_datapath.c with BCC (in a child
process, controller/bpfload.py), attach it (XDP ingress + tc clsact egress) and detach it, pin
and open its maps, run it on packets with BPF_PROG_TEST_RUN (decode, tests, benchmarks)."""

import contextlib
import ctypes as C
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import _paths, abi, bpfload, libbpf, netns
from .bpfload import BPF
from .errors import BadInput, DatapathError, MissingFeature
from .libbpf import PinnedMap, pin, test_run

log = logging.getLogger("mptcpctl")

BPF_DIR = _paths.bpf_dir()
SOURCE = BPF_DIR / "mptcp_datapath.c"
BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "mptcpctl" / f"v{abi.MPTCPCTL_ABI}"
RUN_ROOT = Path("/run/mptcpctl")
# Maps pinned at attach, by name; what readers open.
# dss_csum_progs is pinned so that its slot (mptcp_xdp's tail call into mptcp_dss_csum)
# survives the loader: the kernel empties a program array when its last user reference goes.
PINNED_MAPS = ("subflows", "subflow_token", "conns", "counters", "events", "config",
               "dss_csum_progs")
# tc filter priority and handle of our egress classifier (so detach removes only ours).
TC_PRIO = 0xC0DE
TC_HANDLE = 0xC0DE
TC_EGRESS_PARENT = 0xFFFFFFF3
# Largest linear frame XDP test-run accepts is one page minus head/tail room; longer frames
# are cut (the IP length fields still give the payload size).
TEST_RUN_MAX = 3000
ETH_HLEN = 14
# Slot of mptcp_dss_csum in the dss_csum_progs program array (bpf/include/maps.h).
DSS_CSUM_PROG = 0


def scope_name(ns: str | None) -> str:
    """Name under which a namespace's pins and run files live ("init" for the host's)."""
    return ns or "init"


def pin_dir(ns: str | None) -> Path:
    return PIN_ROOT / scope_name(ns)


def state_file(ns: str | None) -> Path:
    return RUN_ROOT / scope_name(ns) / "datapath.json"


def require_bpf() -> None:
    """Fail with MissingFeature unless BCC can be found and we are root. BCC is only looked
    for here: importing it maps LLVM (~60 MB), so only the loader child does (bpfload)."""
    import importlib.util

    if importlib.util.find_spec("bcc") is None:
        raise MissingFeature(
            "BCC is not importable: install python3-bpfcc and use a venv with "
            "--system-site-packages (make deps)"
        )
    if os.geteuid() != 0:
        raise MissingFeature("loading BPF programs needs root")


def ensure_bpffs() -> None:
    if os.path.ismount(BPFFS):
        return
    BPFFS.mkdir(parents=True, exist_ok=True)
    rc = os.system(f"mount -t bpf bpf {BPFFS} >/dev/null 2>&1")
    if rc != 0:
        raise MissingFeature(f"bpffs is not mounted at {BPFFS} and mounting it failed")


def compile_bpf(source: Path, cflags: list[str] | None = None,
                progs: dict[str, int] | None = None) -> bpfload.Loaded:
    """One of our BPF files compiled by BCC in a child process, with bpf/ on the include path
    and the compiler's noise kept off the terminal; every loader here goes through it.
    Returns a bpfload.Loaded: bcc.BPF's load_func / obj[b"map"].map_fd / attach_func, by fd.
    Name the programs in `progs` ({name: BPF.XDP, ...}) and the compiler exits before this
    returns; without, it stays for load_func until .release_compiler() or .close().
    Compile and verifier errors raise DatapathError (one line)."""
    require_bpf()
    flags = [f"-I{BPF_DIR}", "-Wno-unused-function", *(cflags or [])]
    return bpfload.load(source, flags, progs)


class Program:
    """One compiled instance of the datapath: both programs and their (private) maps."""

    def __init__(self, cflags: list[str] | None = None):
        self.bpf = compile_bpf(SOURCE, cflags, progs={
            "mptcp_xdp": BPF.XDP, "mptcp_tc": BPF.SCHED_CLS, "mptcp_dss_csum": BPF.XDP})
        try:
            self.xdp = self.bpf.load_func(b"mptcp_xdp", BPF.XDP)
            self.tc = self.bpf.load_func(b"mptcp_tc", BPF.SCHED_CLS)
            # The DSS checksum check, tail-called by mptcp_xdp from slot DSS_CSUM_PROG.
            self.dss_csum = self.bpf.load_func(b"mptcp_dss_csum", BPF.XDP)
            self.bpf[b"dss_csum_progs"][C.c_int(DSS_CSUM_PROG)] = C.c_int(self.dss_csum.fd)
        except BaseException:
            self.close()
            raise

    def map_fd(self, name: str) -> int:
        return self.bpf[name.encode()].map_fd

    def map(self, name: str, key_type, value_type, percpu: bool = False) -> PinnedMap:
        """The map as a PinnedMap view (shares BCC's fd; do not close)."""
        return PinnedMap(self.map_fd(name), key_type, value_type, percpu)

    def set_config(self, **fields) -> None:
        cfg = abi.Config(**fields)
        self.map("config", C.c_uint32, abi.Config).update(C.c_uint32(0), cfg)

    def run_xdp(self, frame: bytes, repeat: int = 1):
        """(verdict, ns per run) of the XDP program on one frame (at least an Ethernet
        header: the kernel refuses shorter test input)."""
        if len(frame) < ETH_HLEN:
            raise BadInput(f"a {len(frame)}-byte frame is shorter than an Ethernet header")
        retval, ns, _ = test_run(self.xdp.fd, frame[:TEST_RUN_MAX], repeat)
        return retval, ns

    def run_tc(self, frame: bytes, repeat: int = 1):
        if len(frame) < ETH_HLEN:
            raise BadInput(f"a {len(frame)}-byte frame is shorter than an Ethernet header")
        retval, ns, _ = test_run(self.tc.fd, frame[:TEST_RUN_MAX], repeat)
        return retval, ns

    def close(self) -> None:
        self.bpf.close()


class Decoder:
    """Runs frames through a private instance of the XDP program with decode export on and
    returns what it decoded (abi.DecodeResult). Shares no map with an attached datapath."""

    def __init__(self):
        self.prog = Program()
        self.prog.set_config(export_decode=1)
        self.out = self.prog.map("decode_out", C.c_uint32, abi.DecodeResult)

    def decode(self, frame: bytes) -> tuple[int, abi.DecodeResult]:
        verdict, _ = self.prog.run_xdp(frame)
        res = self.out.lookup(C.c_uint32(0))
        if res is None:
            raise DatapathError("decode_out map lookup failed")
        return verdict, res

    def close(self) -> None:
        self.prog.close()


@contextlib.contextmanager
def _quiet_stderr():
    """BCC prints compiler warnings straight to fd 2; keep them off the user's terminal unless
    MPTCPCTL_DEBUG is set."""
    if os.environ.get("MPTCPCTL_DEBUG"):
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# --- attach / detach -------------------------------------------------------------------------


@dataclass
class IfaceState:
    name: str
    ifindex: int
    xdp_flags: int
    added_clsact: bool


@dataclass
class AttachState:
    netns: str | None
    pin_dir: str
    ifaces: list[IfaceState] = field(default_factory=list)

    def save(self) -> None:
        path = state_file(self.netns)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "netns": self.netns,
            "pin_dir": self.pin_dir,
            "ifaces": [vars(i) for i in self.ifaces],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, ns: str | None) -> "AttachState | None":
        """The saved state; None when there is none, or (logged) when it is not one we wrote:
        its interfaces cannot be trusted, and detach removes its pin directory, which must be
        under ours."""
        path = state_file(ns)
        try:
            data = json.loads(path.read_text())
            state = cls(data["netns"], data["pin_dir"],
                        [IfaceState(**i) for i in data["ifaces"]])
        except OSError:
            return None
        except (ValueError, RecursionError, KeyError, TypeError) as e:
            log.warning("%s is unreadable (%s): its interfaces keep their programs", path, e)
            return None
        ours = (isinstance(state.pin_dir, str)   # any ABI version's pins: ours to remove
                and os.path.normpath(state.pin_dir).startswith(f"{PIN_ROOT.parent}/")
                and (state.netns is None or isinstance(state.netns, str))
                and all(isinstance(i.name, str) and type(i.ifindex) is int
                        and type(i.xdp_flags) is int and isinstance(i.added_clsact, bool)
                        for i in state.ifaces))
        if not ours:
            log.warning("%s is not a state file of ours: its interfaces keep their programs",
                        path)
            return None
        return state


def is_attached(ns: str | None) -> bool:
    return state_file(ns).exists() or pin_dir(ns).exists()


class Attachment:
    """A loaded datapath, maps pinned, attached to a set of interfaces that can change (the
    daemon adds interfaces as they come up). Create and use it inside the namespace it
    serves. close() detaches everything; release() keeps the programs attached and lets go."""

    def __init__(self, ns: str | None = None, xdp_flags: int = 0):
        require_bpf()
        ensure_bpffs()
        from pyroute2 import IPRoute

        self.xdp_flags = xdp_flags
        self.state = AttachState(ns, str(pin_dir(ns)))
        self.ipr = IPRoute()
        self.prog = None
        try:
            self.prog = Program()
            _pin_maps(self.prog, pin_dir(ns))
            self.state.save()
        except BaseException:
            self.close()
            raise

    @property
    def ifaces(self) -> list[str]:
        return [i.name for i in self.state.ifaces]

    def add(self, name: str) -> None:
        if name in self.ifaces:
            return
        found = self.ipr.link_lookup(ifname=name)
        if not found:
            where = f" in netns {self.state.netns}" if self.state.netns else ""
            raise BadInput(f"no interface named {name!r}{where}")
        self.state.ifaces.append(_attach_one(self.ipr, self.prog, name, found[0],
                                             self.xdp_flags))
        self.state.save()

    def remove(self, name: str) -> None:
        for st in list(self.state.ifaces):
            if st.name == name:
                _detach_iface(self.ipr, st)
                self.state.ifaces.remove(st)
                self.state.save()

    def set_tokens(self, tokens: list) -> None:
        """Tell the datapath the local connection token of subflows [(FlowKey, token)] (the
        daemon knows them from the path manager's events), so it sums them per connection."""
        write_tokens(self.prog.map("subflow_token", abi.FlowKey, C.c_uint32),
                     self.prog.map("config", C.c_uint32, abi.Config), tokens)

    def forget(self, name: str) -> None:
        """The interface vanished (and its programs with it): drop it from the state."""
        self.state.ifaces = [i for i in self.state.ifaces if i.name != name]
        self.state.save()

    def release(self) -> None:
        if self.prog:
            self.prog.close()
        self.ipr.close()

    def close(self) -> None:
        _detach_state(self.ipr, self.state)
        self.release()


def attach(ifaces: list[str], ns: str | None = None, xdp_flags: int = 0) -> AttachState:
    """Load the datapath and attach it to `ifaces` in namespace `ns` (None: this one), then
    leave it attached. On any failure, everything done so far is undone."""
    if not ifaces:
        raise BadInput("no interface given (use --iface IF)")
    if len(set(ifaces)) != len(ifaces):
        raise BadInput("an interface is given twice")
    if is_attached(ns):
        where = f"netns {ns}" if ns else "this namespace"
        raise BadInput(f"the datapath is already attached in {where}; run `mptcpctl detach` first")
    require_bpf()
    with netns.entered(ns):
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for name in ifaces:
                if not ipr.link_lookup(ifname=name):
                    where = f" in netns {ns}" if ns else ""
                    raise BadInput(f"no interface named {name!r}{where}")
        att = Attachment(ns, xdp_flags)
        try:
            for name in ifaces:
                att.add(name)
        except BaseException:
            att.close()
            raise
        att.release()
    return att.state


def _attach_one(ipr, prog: Program, name: str, idx: int, xdp_flags: int) -> IfaceState:
    from pyroute2.netlink.exceptions import NetlinkError

    if _xdp_prog_id(ipr, idx):
        raise BadInput(f"{name} already has an XDP program (not ours?); detach it first")
    try:
        libbpf.xdp_attach(idx, prog.xdp.fd, xdp_flags)
    except DatapathError as e:
        raise DatapathError(f"attaching XDP to {name} failed: {e}") from e
    added = False
    try:
        ipr.tc("add", "clsact", idx)
        added = True
    except NetlinkError as e:
        if e.code != 17:  # EEXIST: the user's clsact qdisc; we add our filter to it
            _xdp_remove(idx, xdp_flags)
            raise DatapathError(f"adding clsact to {name} failed: {e}") from e
    state = IfaceState(name, idx, xdp_flags, added)
    try:
        ipr.tc(
            "add-filter", "bpf", idx, handle=TC_HANDLE, fd=prog.tc.fd, name="mptcpctl",
            parent=TC_EGRESS_PARENT, prio=TC_PRIO, classid=1, direct_action=True,
        )
    except NetlinkError as e:
        _detach_iface(ipr, state)
        raise DatapathError(f"attaching the tc egress filter to {name} failed: {e}") from e
    return state


def _xdp_prog_id(ipr, idx: int) -> int:
    link = ipr.get_links(idx)[0]
    xdp = link.get_attr("IFLA_XDP")
    if not xdp:
        return 0
    return xdp.get_attr("IFLA_XDP_PROG_ID") or 0


def _xdp_remove(idx: int, flags: int) -> None:
    with contextlib.suppress(DatapathError):
        libbpf.xdp_detach(idx, flags)


def _detach_iface(ipr, st: IfaceState) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    found = ipr.link_lookup(ifname=st.name)
    if found:
        _xdp_remove(found[0], st.xdp_flags)
        with contextlib.suppress(NetlinkError):
            if st.added_clsact:
                ipr.tc("del", "clsact", st.ifindex)
            else:
                ipr.tc("del-filter", "bpf", st.ifindex, handle=TC_HANDLE,
                       parent=TC_EGRESS_PARENT, prio=TC_PRIO)


def _detach_state(ipr, state: AttachState) -> None:
    for st in reversed(state.ifaces):
        _detach_iface(ipr, st)
    shutil.rmtree(state.pin_dir, ignore_errors=True)
    _remove_empty_parents(Path(state.pin_dir))
    with contextlib.suppress(FileNotFoundError):
        state_file(state.netns).unlink()
    _remove_empty_parents(state_file(state.netns).parent, stop=RUN_ROOT.parent)


def _remove_empty_parents(path: Path, stop: Path = BPFFS) -> None:
    path = path if path.is_dir() else path.parent
    while path != stop and str(path).startswith(str(stop)):
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def detach(ns: str | None = None) -> bool:
    """Detach what `attach` attached in `ns`; also cleans stale pins. True if anything was
    attached. Interfaces that vanished meanwhile (a deleted namespace) are skipped."""
    state = AttachState.load(ns)
    if state is None and not pin_dir(ns).exists() and not state_file(ns).exists():
        return False
    if ns and not netns.exists(ns):
        # The namespace is gone, and with it its interfaces and programs: only files remain.
        state = state or AttachState(ns, str(pin_dir(ns)))
        state.ifaces = []
        _detach_state(None, state)
        return True
    with netns.entered(ns):
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            _detach_state(ipr, state or AttachState(ns, str(pin_dir(ns))))
    return True


def _pin_maps(prog: Program, where: Path) -> None:
    if where.exists():
        # BCC would silently reuse a stale pin of an older load: never keep one.
        shutil.rmtree(where)
    where.mkdir(parents=True)
    for name in PINNED_MAPS:
        pin(prog.map_fd(name), str(where / name))


def write_tokens(subflow_token: PinnedMap, config: PinnedMap, tokens: list) -> None:
    """Write local connection tokens [(FlowKey, token)] to subflow_token, then bump
    config.token_gen so the datapath looks them up (each subflow does once per bump)."""
    if not tokens:
        return
    for key, tok in tokens:
        subflow_token.update(key, C.c_uint32(tok))
    cfg = config.lookup(C.c_uint32(0)) or abi.Config()
    cfg.token_gen = (cfg.token_gen + 1) & 0xFFFFFFFF
    config.update(C.c_uint32(0), cfg)


# --- readers of the pinned maps --------------------------------------------------------------


class PinnedDatapath:
    """Read-side view of an attached datapath's pinned maps (status, top, tests)."""

    def __init__(self, ns: str | None = None):
        where = pin_dir(ns)
        if not where.exists():
            raise BadInput(
                "the datapath is not attached" + (f" in netns {ns}" if ns else "")
                + " (run `mptcpctl attach --iface IF`)"
            )
        self.subflows = PinnedMap.open(str(where / "subflows"), abi.FlowKey, abi.SubflowStats)
        self.subflow_token = PinnedMap.open(str(where / "subflow_token"), abi.FlowKey, C.c_uint32)
        self.conns = PinnedMap.open(str(where / "conns"), C.c_uint32, abi.ConnStats)
        self.counters = PinnedMap.open(str(where / "counters"), C.c_uint32, C.c_uint64, percpu=True)
        self.config = PinnedMap.open(str(where / "config"), C.c_uint32, abi.Config)
        # Pinned by the coupled congestion control when it runs (mptcpctl up --cc ...).
        self.tcp_state = None
        if (where / "tcp_state").exists():
            self.tcp_state = PinnedMap.open(str(where / "tcp_state"), abi.FlowKey,
                                            abi.SfTcpState)

    def set_tokens(self, tokens: list) -> None:
        write_tokens(self.subflow_token, self.config, tokens)

    def counter_values(self) -> dict[str, int]:
        out = {}
        for c in abi.Counter:
            if c in (abi.Counter.CNT_OPT_BASE, abi.Counter.CNT_MAX):
                continue
            vals = self.counters.lookup(C.c_uint32(c))
            out[c.name.removeprefix("CNT_").lower()] = sum(vals) if vals else 0
        for s in abi.Subtype:
            vals = self.counters.lookup(C.c_uint32(abi.Counter.CNT_OPT_BASE + s))
            out[f"opt_{s.name.lower()}"] = sum(vals) if vals else 0
        return out

    def close(self) -> None:
        for m in (self.subflows, self.subflow_token, self.conns, self.counters, self.config,
                  self.tcp_state):
            if m is not None:
                m.close()
