"""Python mirror of bpf/include/abi.h: constants, enums and struct layouts (ctypes).

Update both files together; tests/unit/test_abi.py compiles the header and compares.
"""

import ctypes as C
import enum

MPTCPCTL_ABI = 3
TCPOPT_MPTCP = 30
TCP_OPT_SPACE = 40
MAX_DECODED_OPTS = 13
MAX_IPV6_EXT_HDRS = 4
OPT_DATA_LEN = 40


class Subtype(enum.IntEnum):
    MP_CAPABLE = 0
    MP_JOIN = 1
    DSS = 2
    ADD_ADDR = 3
    REMOVE_ADDR = 4
    MP_PRIO = 5
    MP_FAIL = 6
    MP_FASTCLOSE = 7
    MP_TCPRST = 8
    UNKNOWN = 9


MPTCP_SUB_SLOTS = 10


class Present(enum.IntFlag):
    HAS_KEY_A = 1 << 0
    HAS_KEY_B = 1 << 1
    HAS_WORD = 1 << 2
    HAS_NONCE = 1 << 3
    HAS_DATA_LEN = 1 << 4
    HAS_CHECKSUM = 1 << 5
    HAS_PORT = 1 << 6
    HAS_ADDR_ID = 1 << 7
    HAS_DATA = 1 << 8
    HAS_ADDR = 1 << 9
    ACK64 = 1 << 10
    DSN64 = 1 << 11


DSS_FLAG_A = 0x01
DSS_FLAG_a = 0x02  # noqa: N816 (RFC 8684 flag name)
DSS_FLAG_M = 0x04
DSS_FLAG_m = 0x08  # noqa: N816
DSS_FLAG_F = 0x10


class SubflowFlags(enum.IntFlag):
    SF_HAVE_LOCAL_KEY = 1 << 0
    SF_HAVE_REMOTE_KEY = 1 << 1
    SF_HAVE_TOKEN = 1 << 2
    SF_HAVE_REMOTE_TOKEN = 1 << 3
    SF_JOIN = 1 << 4
    SF_BACKUP = 1 << 5
    SF_CHECKSUM = 1 << 6
    SF_HAVE_PEER_ISN = 1 << 7


class CsumState(enum.IntEnum):
    CSUM_IDLE = 0
    CSUM_OPEN = 1
    CSUM_SKIP = 2
    CSUM_DONE = 3


class Counter(enum.IntEnum):
    CNT_PACKETS = 0
    CNT_TCP = 1
    CNT_MPTCP = 2
    CNT_MALFORMED = 3
    CNT_UNKNOWN = 4
    CNT_EVENTS_LOST = 5
    CNT_NOT_PARSED = 6
    CNT_OPT_BASE = 8
    CNT_DSS_CSUM_OK = 18
    CNT_DSS_CSUM_BAD = 19
    CNT_DSS_CSUM_UNVERIFIABLE = 20
    CNT_MAX = 21


class EventType(enum.IntEnum):
    EV_MPC_KEYS = 1
    EV_JOIN_SYN = 2
    EV_ADD_ADDR = 3
    EV_REMOVE_ADDR = 4
    EV_MP_PRIO = 5
    EV_MP_FAIL = 6
    EV_FASTCLOSE = 7
    EV_TCPRST = 8
    EV_MALFORMED = 9
    EV_DSS_CSUM_BAD = 10


class Direction(enum.IntEnum):
    DIR_INGRESS = 0
    DIR_EGRESS = 1


class MptcpOpt(C.Structure):
    _fields_ = [
        ("subtype", C.c_uint8),
        ("len", C.c_uint8),
        ("flags", C.c_uint8),
        ("version", C.c_uint8),
        ("addr_id", C.c_uint8),
        ("n", C.c_uint8),
        ("present", C.c_uint16),
        ("key_a", C.c_uint64),
        ("key_b", C.c_uint64),
        ("word", C.c_uint32),
        ("nonce", C.c_uint32),
        ("data_len", C.c_uint16),
        ("checksum", C.c_uint16),
        ("port", C.c_uint16),
        ("reason", C.c_uint8),
        ("offset", C.c_uint8),
        ("addr", C.c_uint8 * 16),
        ("data", C.c_uint8 * OPT_DATA_LEN),
    ]


class FlowKey(C.Structure):
    _fields_ = [
        ("family", C.c_uint8),
        ("pad", C.c_uint8 * 3),
        ("lport", C.c_uint16),
        ("rport", C.c_uint16),
        ("laddr", C.c_uint8 * 16),
        ("raddr", C.c_uint8 * 16),
    ]


def flow_key(local: str, lport: int, remote: str, rport: int) -> FlowKey:
    """The FlowKey of a subflow as this host sees it (addresses as text, ports in host order)."""
    import ipaddress
    import socket

    la, ra = ipaddress.ip_address(local), ipaddress.ip_address(remote)
    k = FlowKey(family=la.version, lport=socket.htons(lport), rport=socket.htons(rport))
    k.laddr[:] = list(la.packed.ljust(16, b"\0"))
    k.raddr[:] = list(ra.packed.ljust(16, b"\0"))
    return k


class DirStats(C.Structure):
    _fields_ = [
        ("packets", C.c_uint64),
        ("bytes", C.c_uint64),
        ("dss_mappings", C.c_uint64),
        ("data_retrans", C.c_uint64),
        ("dsn_highest", C.c_uint64),
    ]


class DssCsum(C.Structure):
    _fields_ = [
        ("dsn", C.c_uint64),
        ("start_seq", C.c_uint32),
        ("subflow_seq", C.c_uint32),
        ("done", C.c_uint32),
        ("sum", C.c_uint32),
        ("data_len", C.c_uint16),
        ("csum", C.c_uint16),
        ("state", C.c_uint8),
        ("pad", C.c_uint8 * 3),
        ("verified", C.c_uint64),
        ("bad", C.c_uint64),
        ("unverifiable", C.c_uint64),
    ]


class SubflowStats(C.Structure):
    _fields_ = [
        ("dir", DirStats * 2),
        ("opts", C.c_uint64 * MPTCP_SUB_SLOTS),
        ("local_key", C.c_uint64),
        ("remote_key", C.c_uint64),
        ("first_ns", C.c_uint64),
        ("last_ns", C.c_uint64),
        ("token", C.c_uint32),
        ("remote_token", C.c_uint32),
        ("flags", C.c_uint32),
        ("ifindex", C.c_uint32),
        ("token_gen", C.c_uint32),
        ("peer_isn", C.c_uint32),
        ("csum", DssCsum),
        ("conn_summed", C.c_uint32 * 2),
    ]


class ConnStats(C.Structure):
    _fields_ = [
        ("dir", DirStats * 2),
        ("mp_fail", C.c_uint64),
        ("fastclose", C.c_uint64),
        ("tcprst", C.c_uint64),
        ("first_ns", C.c_uint64),
        ("last_ns", C.c_uint64),
        ("flags", C.c_uint32),
        ("pad", C.c_uint32),
    ]


class Event(C.Structure):
    _fields_ = [
        ("type", C.c_uint32),
        ("ifindex", C.c_uint32),
        ("dir", C.c_uint8),
        ("tcp_flags", C.c_uint8),
        ("pad", C.c_uint8 * 6),
        ("ts_ns", C.c_uint64),
        ("flow", FlowKey),
        ("opt", MptcpOpt),
    ]


class DecodeResult(C.Structure):
    _fields_ = [
        ("parsed", C.c_uint8),
        ("malformed", C.c_uint8),
        ("family", C.c_uint8),
        ("tcp_flags", C.c_uint8),
        ("nopts", C.c_uint8),
        ("nspans", C.c_uint8),
        ("sport", C.c_uint16),
        ("dport", C.c_uint16),
        ("payload", C.c_uint16),
        ("saddr", C.c_uint8 * 16),
        ("daddr", C.c_uint8 * 16),
        ("span_at", C.c_uint8 * 16),
        ("span_len", C.c_uint8 * 16),
        ("pad", C.c_uint8 * 4),
        ("opts", MptcpOpt * MAX_DECODED_OPTS),
    ]


class Config(C.Structure):
    _fields_ = [
        ("export_decode", C.c_uint32),
        ("token_gen", C.c_uint32),
    ]


class SfTcpState(C.Structure):
    _fields_ = [
        ("bytes_acked", C.c_uint64),
        ("updated_ns", C.c_uint64),
        ("snd_cwnd", C.c_uint32),
        ("snd_ssthresh", C.c_uint32),
        ("srtt_us", C.c_uint32),
        ("mss", C.c_uint32),
        ("packets_out", C.c_uint32),
        ("total_retrans", C.c_uint32),
        ("clamp", C.c_uint32),
        ("state", C.c_uint32),
    ]


class CcConfig(C.Structure):
    _fields_ = [("netns_cookie", C.c_uint64)]


CLAMP_NONE = 0x7FFFFFFF

# Every struct mirrored here, by its C name (the ABI test walks this table).
STRUCTS = {
    "mptcp_opt": MptcpOpt,
    "flow_key": FlowKey,
    "dir_stats": DirStats,
    "dss_csum": DssCsum,
    "subflow_stats": SubflowStats,
    "conn_stats": ConnStats,
    "event": Event,
    "decode_result": DecodeResult,
    "config": Config,
    "sf_tcp_state": SfTcpState,
    "cc_config": CcConfig,
}

# Every #define and enum constant mirrored here, by its C name.
CONSTANTS = {
    "MPTCPCTL_ABI": MPTCPCTL_ABI,
    "TCPOPT_MPTCP": TCPOPT_MPTCP,
    "TCP_OPT_SPACE": TCP_OPT_SPACE,
    "MAX_DECODED_OPTS": MAX_DECODED_OPTS,
    "MAX_IPV6_EXT_HDRS": MAX_IPV6_EXT_HDRS,
    "OPT_DATA_LEN": OPT_DATA_LEN,
    "MPTCP_SUB_SLOTS": MPTCP_SUB_SLOTS,
    "DSS_FLAG_A": DSS_FLAG_A,
    "DSS_FLAG_a": DSS_FLAG_a,
    "DSS_FLAG_M": DSS_FLAG_M,
    "DSS_FLAG_m": DSS_FLAG_m,
    "DSS_FLAG_F": DSS_FLAG_F,
    "CLAMP_NONE": CLAMP_NONE,
    **{f"MPTCP_SUB_{s.name.removeprefix('MP_')}": int(s) for s in Subtype},
    **{m.name: int(m) for m in Present},
    **{m.name: int(m) for m in SubflowFlags},
    **{m.name: int(m) for m in CsumState},
    **{m.name: int(m) for m in Counter},
    **{m.name: int(m) for m in EventType},
    **{m.name: int(m) for m in Direction},
}
