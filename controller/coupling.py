"""The controller's half of the coupled congestion control: choose the algorithm the sockops
program runs on every ACK (bpf/include/coupled.h, fixed point; controller/cc.py holds the same
equations in floating point, documented and unit-tested), lift every clamp at `down`, and show
each subflow's window, clamp and RTT to `status` and `top`.

Why per ACK in BPF and not a controller loop: an earlier design ran cc.py every 20 ms and pushed
clamps; on the shared-bottleneck benchmark it lagged the network by a tick plus an ACK and let
the MPTCP connection take only 0.18-0.45 of the link (goal 0.40-0.60). In BPF the window is
decided on the very ACK that earns it, from the sibling subflows' windows and RTTs as of their
own last ACKs (their staleness is at most one of their inter-ACK gaps)."""

from __future__ import annotations

import ctypes as C

from . import abi, cc
from .errors import BadInput
from .libbpf import PinnedMap

# bpf/include/coupled.h CC_* and mptcp_sockops.c CC_LIFT.
ALGO_CODES = {"uncoupled": 0, "lia": 1, "olia": 2, "balia": 3}
CC_LIFT = 255


class CcParams(C.Structure):
    """struct cc_params (bpf/include/coupled.h)."""

    _fields_ = [("algo", C.c_uint32), ("min_clamp", C.c_uint32)]


class CcSf(C.Structure):
    """struct cc_sf (bpf/include/coupled.h)."""

    _fields_ = [("conn", C.c_uint64), ("bytes_acked", C.c_uint64), ("w", C.c_uint32),
                ("pushed", C.c_uint32), ("last_ssthresh", C.c_uint32), ("slot", C.c_uint32),
                ("coupled", C.c_uint32), ("losses", C.c_uint32), ("merged", C.c_uint32),
                ("sndbuf", C.c_uint32)]


class CcSlot(C.Structure):
    """struct cc_slot (bpf/include/coupled.h): one subflow of a connection's coupling."""

    _fields_ = [("id", C.c_uint32), ("w", C.c_uint32), ("rtt_us", C.c_uint32),
                ("pad", C.c_uint32), ("l1", C.c_uint64), ("l2", C.c_uint64)]


CC_SLOTS = 8


class CcConn(C.Structure):
    """struct cc_conn (bpf/include/coupled.h), the cc_conns value."""

    _fields_ = [("sl", CcSlot * CC_SLOTS), ("last_cut_ns", C.c_uint64)]


W_SHIFT = 10

# The mirror of bpf/include/coupled.h, checked against it by tests/unit/test_abi.py.
STRUCTS = {"cc_slot": CcSlot, "cc_conn": CcConn, "cc_params": CcParams, "cc_sf": CcSf}
CONSTANTS = {**{f"CC_{k.upper()}": v for k, v in ALGO_CODES.items()}, "CC_SLOTS": CC_SLOTS,
             "W_SHIFT": W_SHIFT, "INC_SHIFT": 20, "RHO_SHIFT": 16, "CC_MIN_CLAMP": cc.MIN_CLAMP,
             "CC_RTO_MIN_US": int(cc.RTO_MIN_US)}


class Coupler:
    """Sets the algorithm in the loaded sockops program; reads what it did."""

    def __init__(self, algo: str, sockops):
        if algo not in ALGO_CODES:
            raise BadInput(f"unknown congestion control {algo!r}; choose one of "
                              f"{', '.join(cc.ALGORITHMS)}")
        self.algo = algo
        self.sockops = sockops
        self._set(ALGO_CODES[algo])

    def _map(self, name: str, key_type, value_type) -> PinnedMap:
        return PinnedMap(self.sockops.bpf[name.encode()].map_fd, key_type, value_type)

    def _set(self, code: int) -> None:
        self._map("cc_params", C.c_uint32, CcParams).update(
            C.c_uint32(0), CcParams(algo=code, min_clamp=cc.MIN_CLAMP))

    def lift(self) -> None:
        """Stop coupling: every subflow's clamp goes back to 'none' on its next ACK (the
        sockops program's close waits for that)."""
        self._set(CC_LIFT)

    def view(self) -> dict[bytes, dict]:
        """Per subflow (raw FlowKey): cwnd, clamp and srtt as the kernel has them now, the
        coupled window and the loss episodes the algorithm saw."""
        coupled = {bytes(k): v for k, v in self._map("cc_sf", abi.FlowKey, CcSf).items()}
        out = {}
        for raw, st in self.sockops.subflows().items():
            sf = coupled.get(raw)
            out[raw] = {"cwnd": st.snd_cwnd,
                        "clamp": st.clamp if st.clamp not in (0, abi.CLAMP_NONE) else None,
                        "srtt_ms": round(st.srtt_us / 1000, 2),
                        "coupled_window": round(sf.w / (1 << W_SHIFT), 2) if sf else None,
                        "losses": sf.losses if sf else 0,
                        # losses that were one congestion event with a sibling's: no cut
                        "merged_losses": sf.merged if sf else 0,
                        # the send buffer the program raised it to (None: autotuned)
                        "sndbuf": sf.sndbuf or None if sf else None}
        return out
