"""Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4) for the load balancer: the
lookup table the XDP program indexes with a flow hash, and that flow hash (mirror of
flow_hash() in bpf/mptcp_lb.c). Pure functions; no BPF here."""

import hashlib
import ipaddress
import struct

from .lb_abi import LB_HASH_SEED, LB_NO_BACKEND, LB_RING_SIZE

_M32 = 0xFFFFFFFF


def _name_hashes(name: str) -> tuple[int, int]:
    """Two independent 64-bit hashes of a backend's name (offset and skip of its permutation)."""
    d = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(d[:8], "big"), int.from_bytes(d[8:16], "big")


def build_table(backends: dict[int, str], size: int = LB_RING_SIZE) -> list[int]:
    """The Maglev lookup table: slot -> backend id. `backends` maps a stable id (the index of
    the backend in the BPF backends map) to a stable name (its address). Each backend's
    preference list is a permutation of the slots (offset + j * skip mod size, size prime);
    backends take turns claiming their next free preferred slot until the table is full, so
    each gets size/N slots (±1) and removing one of N moves about 1/N of the slots."""
    if not backends:
        return [LB_NO_BACKEND] * size
    ids = sorted(backends, key=lambda i: backends[i])
    perms = []
    for i in ids:
        h1, h2 = _name_hashes(backends[i])
        perms.append((h1 % size, h2 % (size - 1) + 1))
    table = [LB_NO_BACKEND] * size
    nxt = [0] * len(ids)
    filled = 0
    while True:
        for n, bid in enumerate(ids):
            offset, skip = perms[n]
            j = nxt[n]
            slot = (offset + j * skip) % size
            while table[slot] != LB_NO_BACKEND:
                j += 1
                slot = (offset + j * skip) % size
            table[slot] = bid
            nxt[n] = j + 1
            filled += 1
            if filled == size:
                return table


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix(h: int, k: int) -> int:
    k = (k * 0xCC9E2D51) & _M32
    k = _rotl(k, 15)
    k = (k * 0x1B873593) & _M32
    h ^= k
    h = _rotl(h, 13)
    return (h * 5 + 0xE6546B64) & _M32


def flow_hash(saddr: str, sport: int, dport: int) -> int:
    """murmur3_32 of (client address, ports) exactly as bpf/mptcp_lb.c computes it: the
    address's 4-byte words (1 for IPv4, 4 for IPv6) and the two network-order ports, each word
    read little-endian as the program loads it. The VIP is not hashed: one LB, one VIP."""
    raw = ipaddress.ip_address(saddr).packed + struct.pack("!HH", sport, dport)
    h = LB_HASH_SEED
    for (w,) in struct.iter_unpack("<I", raw):
        h = _mix(h, w)
    h ^= len(raw)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def slot(h: int, size: int = LB_RING_SIZE) -> int:
    """The table slot of a flow hash: (h * size) >> 32, as the program computes it (a
    multiply, not a division)."""
    return (h * size) >> 32


def pick(table: list[int], saddr: str, sport: int, dport: int) -> int:
    """The backend id the XDP program picks for a new flow."""
    return table[slot(flow_hash(saddr, sport, dport), len(table))]
