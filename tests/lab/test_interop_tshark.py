"""Interop tier: real kernel MPTCP traffic captured in the lab, decoded by `mptcpctl decode
--json` and by tshark; both must agree field by field on every MPTCP option of every frame, and
each capture must hold the options its scenario was built to produce."""

import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gates import missing_root_bpf, skip_or_fail

from . import mptcp_scenarios as sc

PORT = 5300
# A second server address, announced by a `signal` endpoint (ADD_ADDR) and withdrawn later
# (REMOVE_ADDR); same subnet as the server's own, so the router already routes it.
SERVER_ADDR2 = {"ipv4": "10.81.9.3/24", "ipv6": "fd81:9::3/64"}
TCP_FLAG_LETTERS = "FSRPAUEC"  # bits 0..7 of the TCP flags byte, as `mptcpctl decode` prints
# tshark preferences: raw (wire) MPTCP sequence numbers, no cross-packet mapping analysis
TSHARK_PREFS = ["-o", "mptcp.relative_sequence_numbers:FALSE",
                "-o", "mptcp.analyze_mappings:FALSE"]
F = "tcp.options.mptcp."  # prefix of every tshark MPTCP option field


def require_interop_tools() -> None:
    """Skip (or fail, with MPTCPCTL_REQUIRE_ALL=1) without tshark, tcpdump or BPF (the decoder
    runs the real XDP program); the lab fixture already checked root and netns."""
    missing = [t for t in ("tshark", "tcpdump") if not shutil.which(t)]
    skip_or_fail(f"{' and '.join(missing)} not installed" if missing else missing_root_bpf())


# --- the two decoders ------------------------------------------------------------------------

def mptcpctl_decode(path: Path) -> list[dict]:
    """`mptcpctl decode FILE --json`: one record per frame."""
    exe = Path(sys.executable).with_name("mptcpctl")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "cli.main"]
    cp = subprocess.run([*argv, "decode", str(path), "--json"], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, f"mptcpctl decode failed: {cp.stderr.strip()[-500:]}"
    return [json.loads(line) for line in cp.stdout.splitlines() if line.strip()]


def tshark_packets(path: Path) -> list[dict]:
    """tshark's JSON dissection, one `layers` dict per frame (-x: with each field's bytes)."""
    cp = subprocess.run(["tshark", "-r", str(path), "-x", "-T", "json", "--no-duplicate-keys",
                         *TSHARK_PREFS], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, f"tshark failed: {cp.stderr.strip()[-500:]}"
    return [p["_source"]["layers"] for p in json.loads(cp.stdout)]


def _one(x):
    """tshark repeats a layer or key as a list; the first (outermost) occurrence."""
    return x[0] if isinstance(x, list) else x


def _as_list(x) -> list:
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def _int(text: str | None) -> int | None:
    """tshark's integers: decimal, or hex with 0x."""
    if text is None:
        return None
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def _hex(text: str | None, digits: int) -> str | None:
    """A tshark integer as lowercase hex of `digits` digits (our decoder's key/token form)."""
    return None if text is None else f"{_int(text):0{digits}x}"


def _bool(text: str | None) -> bool | None:
    return None if text is None else bool(_int(text))


def _flags(opt: dict) -> dict:
    return opt.get(F + "flags_tree", {})


def dss_checksum_from_raw(raw: bytes) -> int | None:
    """The DSS checksum from the option bytes tshark framed (RFC 8684 3.3: kind, length,
    subtype, flags, ack 0/4/8, then mapping DSN 4/8 + SSN 4 + length 2 + checksum 2).
    tshark 4.0 leaves the checksum field out of a 24-byte DSS (8-byte DSN, 4-byte ack),
    although the bytes are there; this reads them where tshark put the option."""
    if len(raw) < 4:
        return None
    flags = raw[3]
    ack = (8 if flags & 0x02 else 4) if flags & 0x01 else 0
    if not flags & 0x04:
        return None
    end_of_map = 4 + ack + (8 if flags & 0x08 else 4) + 4 + 2
    if len(raw) < end_of_map + 2:
        return None
    return int.from_bytes(raw[end_of_map:end_of_map + 2], "big")


def tshark_option(opt: dict, raw: bytes = b"") -> dict:
    """One tshark MPTCP option (and its bytes as tshark framed them) in the schema of
    `mptcpctl decode --json`. Fields tshark does not express are left out, so only fields
    both decoders express are compared."""
    st = _int(opt[F + "subtype"])
    g, fl = opt.get, _flags(opt)
    if st == 0:
        return {"subtype": "MP_CAPABLE", "version": _int(g(F + "version")),
                "flags": _int(g(F + "flags")),
                "sender_key": _hex(g(F + "sendkey"), 16),
                "receiver_key": _hex(g(F + "recvkey"), 16),
                "data_len": _int(g(F + "datalvllen")), "checksum": _int(g(F + "checksum"))}
    if st == 1:
        rec = {"subtype": "MP_JOIN", "address_id": _int(g(F + "addrid")),
               "token": _hex(g(F + "recvtok"), 8), "nonce": _int(g(F + "sendrand"))}
        if F + "sendtrunchmac" in opt:  # SYN/ACK: 64-bit truncated HMAC, as a number
            rec["hmac"] = _hex(opt[F + "sendtrunchmac"], 16)
        elif F + "sendhmac" in opt:  # third ACK: full 160-bit HMAC, as colon-separated bytes
            rec["hmac"] = opt[F + "sendhmac"].replace(":", "").lower()
        else:
            rec["hmac"] = None
        if F + "backup.flag" in fl:  # SYN and SYN/ACK carry B; the ACK form has no flags
            rec["backup"] = _bool(fl[F + "backup.flag"])
        return rec
    if st == 2:
        checksum = _int(g(F + "checksum"))
        if checksum is None:
            checksum = dss_checksum_from_raw(raw)
        return {"subtype": "DSS", "data_fin": _bool(fl.get(F + "datafin.flag")),
                "data_ack": _int(g(F + "rawdataack")), "dsn": _int(g(F + "rawdataseqno")),
                "subflow_seq": _int(g(F + "subflowseqno")),
                "data_len": _int(g(F + "datalvllen")), "checksum": checksum}
    if st == 3:
        return {"subtype": "ADD_ADDR", "echo": _bool(g(F + "echo")),
                "address_id": _int(g(F + "addrid")),
                "address": g(F + "ipv4") or g(F + "ipv6"), "port": _int(g(F + "port")),
                "hmac": _hex(g(F + "addaddrtrunchmac"), 16)}
    if st == 4:
        return {"subtype": "REMOVE_ADDR", "address_ids": [_int(a) for a in
                                                          _as_list(g(F + "addrid"))]}
    if st == 5:
        return {"subtype": "MP_PRIO", "backup": _bool(fl.get(F + "backup.flag")),
                "address_id": _int(g(F + "addrid"))}
    if st == 6:
        return {"subtype": "MP_FAIL"}
    if st == 7:
        return {"subtype": "MP_FASTCLOSE", "receiver_key": _hex(g(F + "recvkey"), 16)}
    if st == 8:
        return {"subtype": "MP_TCPRST", "transient": _bool(fl.get(F + "flag_T.flag")),
                "reason": _int(g(F + "rst_reason"))}
    return {"subtype": "UNKNOWN"}


def tshark_record(frame: int, layers: dict) -> dict:
    """One tshark frame in the schema of `mptcpctl decode --json` (only what tshark shows)."""
    tcp = _one(layers.get("tcp"))
    if tcp is None:
        return {"frame": frame, "src": None, "mptcp": []}
    ip = _one(layers.get("ip")) or {}
    ip6 = _one(layers.get("ipv6")) or {}
    bits = _int(tcp["tcp.flags"])
    tree = tcp.get("tcp.options_tree", {})
    opts = _as_list(tree.get("mptcp"))
    # "mptcp_raw" (tshark -x): [hex, offset, length, ...] per option, a list of them if several
    raws = tree.get("mptcp_raw") or []
    if raws and not isinstance(raws[0], list):
        raws = [raws]
    raws = [bytes.fromhex(r[0]) for r in raws] + [b""] * (len(opts) - len(raws))
    return {
        "frame": frame,
        "src": ip.get("ip.src") or _canon6(ip6.get("ipv6.src")),
        "dst": ip.get("ip.dst") or _canon6(ip6.get("ipv6.dst")),
        "sport": int(tcp["tcp.srcport"]),
        "dport": int(tcp["tcp.dstport"]),
        "flags": "".join(c for i, c in enumerate(TCP_FLAG_LETTERS) if bits & (1 << i)),
        "mptcp": [tshark_option(o, r) for o, r in zip(opts, raws, strict=False)],
    }


def _canon6(addr: str | None) -> str | None:
    return None if addr is None else str(ipaddress.ip_address(addr))


# --- the comparison --------------------------------------------------------------------------

def disagreements(ours: list[dict], theirs: list[dict]) -> list[str]:
    """Every difference between our records and tshark's, one line each."""
    problems = []
    if len(ours) != len(theirs):
        problems.append(f"frame count: mptcpctl {len(ours)}, tshark {len(theirs)}")
    for a, b in zip(ours, theirs, strict=False):
        where = f"frame {b['frame']}"
        if a["frame"] != b["frame"]:
            problems.append(f"{where}: mptcpctl numbers it {a['frame']}")
            continue
        if b["src"] is None:
            if a["mptcp"]:
                problems.append(f"{where}: tshark sees no TCP, mptcpctl sees {a['mptcp']}")
            continue
        for key in ("src", "dst", "sport", "dport", "flags"):
            if a[key] != b[key]:
                problems.append(f"{where}: {key} mptcpctl {a[key]!r} tshark {b[key]!r}")
        if a.get("malformed"):
            problems.append(f"{where}: mptcpctl marks a real kernel packet malformed")
        subs_a = [o["subtype"] for o in a["mptcp"]]
        subs_b = [o["subtype"] for o in b["mptcp"]]
        if subs_a != subs_b:
            problems.append(f"{where}: options mptcpctl {subs_a} tshark {subs_b}")
            continue
        for i, (oa, ob) in enumerate(zip(a["mptcp"], b["mptcp"], strict=True)):
            for field, want in ob.items():
                if field not in oa:
                    problems.append(f"{where} option {i} {ob['subtype']}: mptcpctl has no "
                                    f"field {field!r}")
                elif oa[field] != want:
                    problems.append(f"{where} option {i} {ob['subtype']}.{field}: mptcpctl "
                                    f"{oa[field]!r} tshark {want!r}")
    return problems


def decode_both(path: Path) -> tuple[list[dict], list[dict]]:
    """(mptcpctl records, tshark records) for one capture, asserted to agree."""
    ours = mptcpctl_decode(path)
    theirs = [tshark_record(int(_one(lay["frame"])["frame.number"]), lay)
              for lay in tshark_packets(path)]
    problems = disagreements(ours, theirs)
    assert not problems, (f"mptcpctl and tshark disagree on {path} ({len(problems)}):\n"
                          + "\n".join(problems[:40]))
    return ours, theirs


# --- what a capture must contain ---------------------------------------------------------------

def options(records: list[dict], subtype: str, **match) -> list[tuple[dict, dict]]:
    """(packet, option) pairs of this subtype whose packet fields equal `match`."""
    return [(r, o) for r in records for o in r["mptcp"] if o["subtype"] == subtype
            and all(r.get(k) == v for k, v in match.items())]


def need(records: list[dict], what: str, subtype: str, check=lambda r, o: True,
         **match) -> list[tuple[dict, dict]]:
    found = [(r, o) for r, o in options(records, subtype, **match) if check(r, o)]
    seen = sorted({o["subtype"] for r in records for o in r["mptcp"]})
    assert found, f"scenario produced no {what} (capture has {seen})"
    return found


def check_handshake(recs: list[dict], client: str, server: str, lte_client: str) -> None:
    """MP_CAPABLE on SYN, SYN/ACK, third ACK and first data; MP_JOIN on SYN, SYN/ACK, ACK
    of the lte subflow."""
    need(recs, "MP_CAPABLE SYN", "MP_CAPABLE", flags="S", src=client, dst=server)
    need(recs, "MP_CAPABLE SYN/ACK", "MP_CAPABLE", lambda r, o: o["sender_key"] is not None,
         flags="SA", src=server, dst=client)
    need(recs, "MP_CAPABLE third ACK (both keys)", "MP_CAPABLE",
         lambda r, o: o["receiver_key"] is not None and o["data_len"] is None,
         flags="A", src=client)
    need(recs, "MP_CAPABLE on the first data (data-level length)", "MP_CAPABLE",
         lambda r, o: o["data_len"] is not None, src=client)
    need(recs, "MP_JOIN SYN on lte", "MP_JOIN", lambda r, o: o["token"] is not None,
         flags="S", src=lte_client)
    need(recs, "MP_JOIN SYN/ACK on lte", "MP_JOIN", lambda r, o: o["hmac"] is not None,
         flags="SA", dst=lte_client)
    need(recs, "MP_JOIN ACK on lte (full HMAC)", "MP_JOIN",
         lambda r, o: o["hmac"] is not None and len(o["hmac"]) == 40, flags="A", src=lte_client)


def dss_mappings(recs: list[dict]) -> list[dict]:
    return [o for _, o in options(recs, "DSS") if o["dsn"] is not None]


# --- scenarios -------------------------------------------------------------------------------

def addrs(lab, family: str) -> dict:
    v6 = family == "ipv6"
    return {"server": lab.server_addr6 if v6 else lab.server_addr,
            "client": lab.paths["wifi"].client_addr6 if v6 else lab.paths["wifi"].client_addr,
            "lte": lab.paths["lte"].client_addr6 if v6 else lab.paths["lte"].client_addr,
            "any": "::" if v6 else "0.0.0.0"}


@pytest.mark.root
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_every_option_of_a_living_connection_decodes_as_tshark_does(lab, tmp_path, family):
    """One capture per family: a plain connection (handshake, joins, data, DATA_FIN), then one
    that gets ADD_ADDR, MP_PRIO, REMOVE_ADDR and ends in MP_FASTCLOSE."""
    require_interop_tools()
    a = addrs(lab, family)
    path = tmp_path / f"{family}.pcap"
    addr2, plen = SERVER_ADDR2[family].split("/")
    with sc.tcpdump(lab.router, lab.router_server_if, path):
        with sc.server(lab.server, a["any"], PORT, "drain"):
            # 1: handshake with data first from the client, the lte join, a clean close
            with sc.client(lab.client, a["server"], PORT) as c:
                c.do("send 20000")
                sc.wait_for("the lte join", lambda: sc.subflow_count(lab.client, PORT) >= 2)
                c.do("send 20000")
                c.do("close")
            sc.wait_for_data_fins(path, 2)
            sc.wait_for("the first connection to close",
                        lambda: sc.subflow_count(lab.client, PORT) == 0)
            # 2: the server announces a second address, then withdraws it
            extra = ["nodad"] if family == "ipv6" else []
            sc.ip(lab.server, "addr", "add", f"{addr2}/{plen}", "dev", lab.server_if, *extra)
            sc.ip(lab.server, "mptcp", "endpoint", "add", addr2, "dev", lab.server_if,
                  "signal")
            with sc.client(lab.client, a["server"], PORT) as c:
                c.do("send 3000")
                sc.wait_for_subtype(path, "ADD_ADDR", at_least=2)  # announce and echo
                sc.wait_for("three subflows", lambda: sc.subflow_count(lab.client, PORT) >= 3)
                lte_id = sc.endpoint_id(lab.client, a["lte"])
                sc.ip(lab.client, "mptcp", "endpoint", "change", "id", str(lte_id), "backup")
                sc.wait_for_subtype(path, "MP_PRIO")
                sc.ip(lab.server, "mptcp", "endpoint", "del", "id",
                      str(sc.endpoint_id(lab.server, addr2)))
                sc.wait_for_subtype(path, "REMOVE_ADDR")
                c.do("stuff")
                c.do("abort")
                sc.wait_for_subtype(path, "MP_FASTCLOSE")

    ours, theirs = decode_both(path)
    check_handshake(theirs, a["client"], a["server"], a["lte"])
    need(theirs, "DATA_FIN", "DSS", lambda r, o: o["data_fin"])
    assert all(o["checksum"] is None for o in dss_mappings(theirs)), "DSS checksum while off"
    announce = need(theirs, "ADD_ADDR announce (with HMAC)", "ADD_ADDR",
                    lambda r, o: not o["echo"] and o["hmac"] is not None)
    assert announce[0][1]["address"] == addr2, announce[0][1]
    need(theirs, "ADD_ADDR echo", "ADD_ADDR", lambda r, o: o["echo"])
    need(theirs, "MP_PRIO backup from the lte address", "MP_PRIO", lambda r, o: o["backup"],
         src=a["lte"])
    aid = announce[0][1]["address_id"]
    need(theirs, f"REMOVE_ADDR of id {aid}", "REMOVE_ADDR",
         lambda r, o: aid in o["address_ids"])
    need(theirs, "MP_FASTCLOSE in a RST", "MP_FASTCLOSE",
         lambda r, o: "R" in r["flags"] and o["receiver_key"] is not None)
    need(theirs, "MP_TCPRST", "MP_TCPRST")


@pytest.mark.root
def test_dss_checksums_decode_as_tshark_does(lab, tmp_path):
    """checksum_enabled=1 on both ends: MP_CAPABLE asks for checksums (flag A) and every DSS
    mapping carries one; restored after."""
    require_interop_tools()
    a = addrs(lab, "ipv4")
    path = tmp_path / "checksum.pcap"
    with sc.sysctl([lab.client, lab.server], "net.mptcp.checksum_enabled", "1"):
        with sc.tcpdump(lab.router, lab.router_server_if, path):
            with sc.server(lab.server, a["any"], PORT, "drain"):
                with sc.client(lab.client, a["server"], PORT) as c:
                    c.do("send 20000")
                    sc.wait_for("the lte join",
                                lambda: sc.subflow_count(lab.client, PORT) >= 2)
                    c.do("send 60000")
                    c.do("close")
                sc.wait_for_data_fins(path, 2)

    ours, theirs = decode_both(path)
    check_handshake(theirs, a["client"], a["server"], a["lte"])
    need(theirs, "MP_CAPABLE SYN asking for checksums (flag A)", "MP_CAPABLE",
         lambda r, o: o["flags"] & 0x80, flags="S")
    need(theirs, "MP_CAPABLE first data with a checksum", "MP_CAPABLE",
         lambda r, o: o["data_len"] is not None and o["checksum"] is not None)
    maps = dss_mappings(theirs)
    assert len(maps) >= 10, f"only {len(maps)} DSS mappings"
    missing = [o for o in maps if o["checksum"] is None]
    assert not missing, f"{len(missing)} DSS mappings without a checksum: {missing[:3]}"
    need(theirs, "a DSS mapping on the lte subflow", "DSS",
         lambda r, o: o["dsn"] is not None, src=a["lte"])
