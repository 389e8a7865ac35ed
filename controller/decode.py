"""Formatting of what the datapath decoded (abi.DecodeResult) for `mptcpctl decode`: one JSON
record per packet, and table rows built from those records. Only formats: subtypes, lengths and
validity come from the BPF program's `present` bits, never from re-reading packet bytes."""

import ipaddress

from . import abi

P = abi.Present
# TCP flag letters for bits 0..7 of the flags byte (FIN SYN RST PSH ACK URG ECE CWR).
TCP_FLAG_LETTERS = "FSRPAUEC"


def tcp_flags(bits: int) -> str:
    return "".join(c for i, c in enumerate(TCP_FLAG_LETTERS) if bits & (1 << i))


def _ip(family: int, raw) -> str:
    b = bytes(raw)
    return str(ipaddress.ip_address(b[:4] if family == 4 else b[:16]))


def _hex(value: int, digits: int) -> str:
    return f"{value:0{digits}x}"


def _opt_record(m: abi.MptcpOpt) -> dict:
    """One decoded option as its JSON object; a field is null unless its present bit is set."""
    has = P(m.present)

    def get(bit, value):
        return value if bit in has else None

    def data() -> str | None:
        return bytes(m.data[: m.n]).hex() if P.HAS_DATA in has else None

    st = m.subtype
    if st == abi.Subtype.MP_CAPABLE:
        return {
            "subtype": "MP_CAPABLE",
            "version": m.version,
            "flags": m.flags,
            "sender_key": get(P.HAS_KEY_A, _hex(m.key_a, 16)),
            "receiver_key": get(P.HAS_KEY_B, _hex(m.key_b, 16)),
            "data_len": get(P.HAS_DATA_LEN, m.data_len),
            "checksum": get(P.HAS_CHECKSUM, m.checksum),
        }
    if st == abi.Subtype.MP_JOIN:
        return {
            "subtype": "MP_JOIN",
            "backup": bool(m.flags & 1),
            "address_id": get(P.HAS_ADDR_ID, m.addr_id),
            "token": get(P.HAS_WORD, _hex(m.word, 8)),
            "nonce": get(P.HAS_NONCE, m.nonce),
            "hmac": data(),
        }
    if st == abi.Subtype.DSS:
        return {
            "subtype": "DSS",
            "data_fin": bool(m.flags & abi.DSS_FLAG_F),
            "data_ack": get(P.HAS_KEY_A, m.key_a),
            "dsn": get(P.HAS_KEY_B, m.key_b),
            "subflow_seq": get(P.HAS_WORD, m.word),
            "data_len": get(P.HAS_DATA_LEN, m.data_len),
            "checksum": get(P.HAS_CHECKSUM, m.checksum),
        }
    if st == abi.Subtype.ADD_ADDR:
        return {
            "subtype": "ADD_ADDR",
            "echo": bool(m.flags & 1),
            "address_id": get(P.HAS_ADDR_ID, m.addr_id),
            "address": get(P.HAS_ADDR, _ip(m.version, m.addr)),
            "port": get(P.HAS_PORT, m.port),
            "hmac": data(),
        }
    if st == abi.Subtype.REMOVE_ADDR:
        ids = list(m.data[: m.n]) if P.HAS_DATA in has else []
        return {"subtype": "REMOVE_ADDR", "address_ids": ids}
    if st == abi.Subtype.MP_PRIO:
        return {
            "subtype": "MP_PRIO",
            "backup": bool(m.flags & 1),
            "address_id": get(P.HAS_ADDR_ID, m.addr_id),
        }
    if st == abi.Subtype.MP_FAIL:
        return {"subtype": "MP_FAIL", "dsn": get(P.HAS_KEY_B, m.key_b)}
    if st == abi.Subtype.MP_FASTCLOSE:
        return {"subtype": "MP_FASTCLOSE", "receiver_key": get(P.HAS_KEY_A, _hex(m.key_a, 16))}
    if st == abi.Subtype.MP_TCPRST:
        return {"subtype": "MP_TCPRST", "transient": bool(m.flags & 1), "reason": m.reason}
    # Subtypes 0x9..0xf keep their wire value in `subtype`; the bytes are the whole option.
    return {"subtype": "UNKNOWN", "raw": data()}


def unparsed_record(frame: int, malformed: bool = False) -> dict:
    """The record of a packet the datapath found no TCP header in."""
    return {
        "frame": frame,
        "src": None,
        "dst": None,
        "sport": None,
        "dport": None,
        "flags": None,
        "mptcp": [],
        "malformed": malformed,
    }


def packet_record(frame: int, res: abi.DecodeResult) -> dict:
    """The JSON object of one packet (schema of `mptcpctl decode --json`)."""
    if not res.parsed:
        return unparsed_record(frame, bool(res.malformed))
    nopts = min(res.nopts, abi.MAX_DECODED_OPTS)
    return {
        "frame": frame,
        "src": _ip(res.family, res.saddr),
        "dst": _ip(res.family, res.daddr),
        "sport": res.sport,
        "dport": res.dport,
        "flags": tcp_flags(res.tcp_flags),
        "mptcp": [_opt_record(res.opts[i]) for i in range(nopts)],
        "malformed": bool(res.malformed),
    }


# --- table rows ------------------------------------------------------------------------------

TABLE_COLUMNS = ("frame", "flow", "flags", "MPTCP options", "malformed")
# Option fields left out of the one-line summary (the subtype leads the line instead).
_SUMMARY_SKIP = {"subtype"}


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def option_summary(opt: dict) -> str:
    """One line for one option record: its subtype, then the fields that are present."""
    parts = [opt["subtype"]]
    for key, value in opt.items():
        if key in _SUMMARY_SKIP or value is None:
            continue
        if isinstance(value, bool):
            if value:
                parts.append(key)
        elif key == "flags":
            parts.append(f"flags=0x{value:02x}")
        elif isinstance(value, list):
            parts.append(f"{key}={','.join(str(v) for v in value)}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def table_row(rec: dict) -> tuple[str, str, str, str, str]:
    """A packet record as table cells (TABLE_COLUMNS): one option summary per line."""
    if rec["src"] is None:
        flow = "-"
    else:
        # Two lines, so IPv6 flows leave room for the options.
        flow = f"{_endpoint(rec['src'], rec['sport'])}\n→ {_endpoint(rec['dst'], rec['dport'])}"
    opts = "\n".join(option_summary(o) for o in rec["mptcp"])
    mark = "MALFORMED" if rec["malformed"] else ""
    return (str(rec["frame"]), flow, rec["flags"] or "", opts, mark)


def table_rows(records) -> list[tuple[str, str, str, str, str]]:
    return [table_row(r) for r in records]
