"""Python mirror of bpf/include/lb_abi.h: the load balancer's constants, enums and structs.

Update both files together; tests/unit/test_abi.py compiles the header and compares.
"""

import ctypes as C
import enum

from .abi import MptcpOpt

LB_RING_SIZE = 65537
LB_MAX_BACKENDS = 64
LB_NO_BACKEND = 0xFFFFFFFF
LB_HASH_SEED = 0x4D505443
LB_CONN_ENTRIES = 262144
LB_TOKEN_ENTRIES = 65536
LB_BLOCK_ENTRIES = 16384
LB_IPIP_PROTO = 4
LB_IP6IP6_PROTO = 41
LB_OUTER_TTL = 64


class Flags(enum.IntFlag):
    LB_F_UNKNOWN_JOIN_HASH = 1 << 0
    LB_F_ENFORCE_HMAC = 1 << 1
    LB_F_NO_TOKEN_STEERING = 1 << 2
    LB_F_STATIC_NEXTHOP = 1 << 3


class BackendFlags(enum.IntFlag):
    LB_BE_IN_USE = 1 << 0
    LB_BE_DRAINING = 1 << 1


class Counter(enum.IntEnum):
    LB_CNT_PACKETS = 0
    LB_CNT_VIP = 1
    LB_CNT_FORWARDED = 2
    LB_CNT_NEW_FLOW = 3
    LB_CNT_CONN_HIT = 4
    LB_CNT_JOIN_HIT = 5
    LB_CNT_JOIN_UNKNOWN = 6
    LB_CNT_JOIN_HASHED = 7
    LB_CNT_BLOCKED = 8
    LB_CNT_NO_BACKEND = 9
    LB_CNT_FIB_FAIL = 10
    LB_CNT_MALFORMED = 11
    LB_CNT_EVENTS_LOST = 12
    LB_CNT_KEYS = 13
    LB_CNT_ADD_ADDR = 14
    LB_CNT_NOT_HANDLED = 15
    LB_CNT_MAX = 16


class EventType(enum.IntEnum):
    LB_EV_KEYS = 1
    LB_EV_ADD_ADDR = 3


class ConnFlags(enum.IntFlag):
    LB_CONN_KEYS_SENT = 1 << 0
    LB_CONN_JOIN = 1 << 1


class LbFlow(C.Structure):
    _fields_ = [
        ("family", C.c_uint8),
        ("proto", C.c_uint8),
        ("pad", C.c_uint16),
        ("sport", C.c_uint16),
        ("dport", C.c_uint16),
        ("saddr", C.c_uint8 * 16),
        ("daddr", C.c_uint8 * 16),
    ]


class LbKey4(C.Structure):
    _fields_ = [
        ("saddr", C.c_uint8 * 4),
        ("sport", C.c_uint16),
        ("pad", C.c_uint16),
    ]


class LbKey6(C.Structure):
    _fields_ = [
        ("saddr", C.c_uint8 * 16),
        ("sport", C.c_uint16),
        ("pad", C.c_uint16),
        ("pad2", C.c_uint32),
    ]


class LbConn(C.Structure):
    _fields_ = [
        ("backend", C.c_uint32),
        ("flags", C.c_uint32),
        ("token", C.c_uint32),
        ("pad", C.c_uint32),
    ]


class LbBackend(C.Structure):
    _fields_ = [
        ("addr", C.c_uint8 * 16),
        ("family", C.c_uint8),
        ("flags", C.c_uint8),
        ("mac", C.c_uint8 * 6),
        ("ifindex", C.c_uint32),
        ("pad", C.c_uint32),
    ]


class LbConfig(C.Structure):
    _fields_ = [
        ("vip", C.c_uint8 * 16),
        ("src", C.c_uint8 * 16),
        ("vip_port", C.c_uint16),
        ("family", C.c_uint8),
        ("pad0", C.c_uint8),
        ("flags", C.c_uint32),
        ("smac", C.c_uint8 * 6),
        ("pad1", C.c_uint8 * 2),
        ("hop_gen", C.c_uint32),
        ("pad2", C.c_uint32),
    ]


class LbEvent(C.Structure):
    _fields_ = [
        ("type", C.c_uint32),
        ("backend", C.c_uint32),
        ("tcp_flags", C.c_uint8),
        ("conn_flags", C.c_uint8),
        ("pad", C.c_uint16),
        ("token", C.c_uint32),
        ("ts_ns", C.c_uint64),
        ("flow", LbFlow),
        ("opt", MptcpOpt),
    ]


STRUCTS = {
    "lb_flow": LbFlow,
    "lb_key4": LbKey4,
    "lb_key6": LbKey6,
    "lb_conn": LbConn,
    "lb_backend": LbBackend,
    "lb_config": LbConfig,
    "lb_event": LbEvent,
}

CONSTANTS = {
    "MPTCPCTL_LB_ABI_H": None,
    "LB_RING_SIZE": LB_RING_SIZE,
    "LB_MAX_BACKENDS": LB_MAX_BACKENDS,
    "LB_NO_BACKEND": LB_NO_BACKEND,
    "LB_HASH_SEED": LB_HASH_SEED,
    "LB_CONN_ENTRIES": LB_CONN_ENTRIES,
    "LB_TOKEN_ENTRIES": LB_TOKEN_ENTRIES,
    "LB_BLOCK_ENTRIES": LB_BLOCK_ENTRIES,
    "LB_IPIP_PROTO": LB_IPIP_PROTO,
    "LB_IP6IP6_PROTO": LB_IP6IP6_PROTO,
    "LB_OUTER_TTL": LB_OUTER_TTL,
    **{m.name: int(m) for m in Flags},
    **{m.name: int(m) for m in BackendFlags},
    **{m.name: int(m) for m in Counter},
    **{m.name: int(m) for m in EventType},
    **{m.name: int(m) for m in ConnFlags},
}
del CONSTANTS["MPTCPCTL_LB_ABI_H"]
