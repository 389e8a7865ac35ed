"""What the datapath knows about subflows and connections, as plain data for status/top:
reads the pinned maps, resolves each subflow's local connection token from the keys seen on
the wire (and writes it back to subflow_token so the datapath aggregates per connection)."""

import ipaddress
import socket
import time
from dataclasses import asdict, dataclass

from . import abi, crypto
from .datapath import PinnedDatapath

SF = abi.SubflowFlags


def _addr(family: int, raw) -> str:
    b = bytes(raw)
    return str(ipaddress.ip_address(b[:4] if family == 4 else b))


def _ifname(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return str(ifindex)


@dataclass
class SubflowView:
    token: str | None      # local connection token (8 hex), as `ss -M` shows it
    local: str
    lport: int
    remote: str
    rport: int
    iface: str
    join: bool
    backup: bool
    checksum: bool
    packets_in: int
    packets_out: int
    bytes_in: int
    bytes_out: int
    dss_mappings: int
    data_retrans: int
    options: dict[str, int]
    age_s: float
    idle_s: float
    cwnd: int | None = None    # from the sockops map, when coupled CC runs
    clamp: int | None = None
    srtt_ms: float | None = None

    @property
    def key(self):
        return (self.local, self.lport, self.remote, self.rport)

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_tokens(entries) -> dict[bytes, int]:
    """Local token of every subflow we can name: from an incoming MP_JOIN SYN (the datapath
    set it), from our own MP_CAPABLE key, or for an outgoing join, via the peer's token, the
    token of the subflow whose remote key hashes to it. Keyed by the raw flow key bytes."""
    tokens: dict[bytes, int] = {}
    by_remote_token: dict[int, int] = {}
    for k, s in entries:
        raw = bytes(k)
        if s.flags & SF.SF_HAVE_TOKEN:
            tokens[raw] = s.token
        elif s.flags & SF.SF_HAVE_LOCAL_KEY:
            tokens[raw] = crypto.token(s.local_key)
        if s.flags & SF.SF_HAVE_REMOTE_KEY and raw in tokens:
            by_remote_token[crypto.token(s.remote_key)] = tokens[raw]
    for k, s in entries:
        raw = bytes(k)
        if raw not in tokens and s.flags & SF.SF_HAVE_REMOTE_TOKEN:
            local = by_remote_token.get(s.remote_token)
            if local is not None:
                tokens[raw] = local
    return tokens


def snapshot(dp: PinnedDatapath, write_tokens: bool = True) -> list[SubflowView]:
    """Every subflow in the datapath's map, tokens resolved (and written back)."""
    entries = list(dp.subflows.items())
    tcp = {bytes(k): v for k, v in dp.tcp_state.items()} if dp.tcp_state else {}
    tokens = resolve_tokens(entries)
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    out = []
    learned = []
    for k, s in entries:
        raw = bytes(k)
        tok = tokens.get(raw)
        if tok is not None and not s.flags & SF.SF_HAVE_TOKEN:
            learned.append((k, tok))
        ingress, egress = s.dir[abi.Direction.DIR_INGRESS], s.dir[abi.Direction.DIR_EGRESS]
        st = tcp.get(raw)
        out.append(
            SubflowView(
                token=f"{tok:08x}" if tok is not None else None,
                local=_addr(k.family, k.laddr),
                lport=socket.ntohs(k.lport),
                remote=_addr(k.family, k.raddr),
                rport=socket.ntohs(k.rport),
                iface=_ifname(s.ifindex),
                join=bool(s.flags & SF.SF_JOIN),
                backup=bool(s.flags & SF.SF_BACKUP),
                checksum=bool(s.flags & SF.SF_CHECKSUM),
                packets_in=ingress.packets,
                packets_out=egress.packets,
                bytes_in=ingress.bytes,
                bytes_out=egress.bytes,
                dss_mappings=ingress.dss_mappings + egress.dss_mappings,
                data_retrans=ingress.data_retrans + egress.data_retrans,
                options={st.name: s.opts[st] for st in abi.Subtype if s.opts[st]},
                age_s=max(0.0, (now - s.first_ns) / 1e9) if s.first_ns else 0.0,
                idle_s=max(0.0, (now - s.last_ns) / 1e9) if s.last_ns else 0.0,
                cwnd=st.snd_cwnd if st else None,
                clamp=st.clamp if st and st.clamp not in (0, abi.CLAMP_NONE) else None,
                srtt_ms=round(st.srtt_us / 1000, 2) if st else None,
            )
        )
    if write_tokens:
        dp.set_tokens(learned)
    out.sort(key=lambda v: (v.token or "", v.join, v.key))
    return out
