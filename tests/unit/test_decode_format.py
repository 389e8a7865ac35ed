"""controller/decode.py formats only what the datapath exported: a field is null unless its
present bit is set, whatever the struct holds; unknown subtypes keep their raw bytes."""

from controller import abi
from controller.decode import option_summary, packet_record, table_row, tcp_flags

P = abi.Present


def result(**kw) -> abi.DecodeResult:
    r = abi.DecodeResult(parsed=1, family=4, tcp_flags=0x12, sport=1, dport=2)
    r.saddr[:4] = [10, 0, 0, 1]
    r.daddr[:4] = [10, 0, 0, 2]
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_tcp_flags_follow_fin_syn_rst_psh_ack_urg_ece_cwr():
    assert tcp_flags(0x12) == "SA"
    assert tcp_flags(0x11) == "FA"
    assert tcp_flags(0xFF) == "FSRPAUEC"
    assert tcp_flags(0) == ""


def test_fields_without_their_present_bit_are_null():
    r = result(nopts=1)
    r.opts[0] = abi.MptcpOpt(subtype=abi.Subtype.DSS, len=8, flags=abi.DSS_FLAG_A, key_a=7,
                             key_b=99, word=5, present=P.HAS_KEY_A)
    assert packet_record(3, r) == {
        "frame": 3, "src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1, "dport": 2,
        "flags": "SA", "malformed": False,
        "mptcp": [{"subtype": "DSS", "data_fin": False, "data_ack": 7, "dsn": None,
                   "subflow_seq": None, "data_len": None, "checksum": None}],
    }


def test_only_nopts_options_are_reported_and_malformed_is_kept():
    r = result(nopts=1, malformed=1)
    r.opts[0] = abi.MptcpOpt(subtype=abi.Subtype.MP_PRIO, len=3, flags=1)
    r.opts[1] = abi.MptcpOpt(subtype=abi.Subtype.MP_PRIO, len=3)
    rec = packet_record(1, r)
    assert rec["mptcp"] == [{"subtype": "MP_PRIO", "backup": True, "address_id": None}]
    assert rec["malformed"] is True


def test_wire_subtypes_above_tcprst_are_unknown_with_raw_bytes():
    r = result(nopts=1)
    r.opts[0] = abi.MptcpOpt(subtype=0xF, len=4, n=4, present=P.HAS_DATA)
    r.opts[0].data[:4] = [0x1E, 0x04, 0xF0, 0xAB]
    assert packet_record(1, r)["mptcp"] == [{"subtype": "UNKNOWN", "raw": "1e04f0ab"}]


def test_add_addr_v6_address_and_hmac_are_formatted():
    r = result(nopts=1)
    m = abi.MptcpOpt(subtype=abi.Subtype.ADD_ADDR, version=6, addr_id=9, port=443, n=8,
                     present=P.HAS_ADDR | P.HAS_ADDR_ID | P.HAS_PORT | P.HAS_DATA)
    m.addr[:] = [0x20, 0x01, 0x0D, 0xB8] + [0] * 11 + [1]
    m.data[:8] = list(range(8))
    r.opts[0] = m
    assert packet_record(1, r)["mptcp"] == [{
        "subtype": "ADD_ADDR", "echo": False, "address_id": 9, "address": "2001:db8::1",
        "port": 443, "hmac": "0001020304050607",
    }]


def test_unparsed_packet_has_null_endpoints_and_no_options():
    r = abi.DecodeResult(parsed=0, malformed=1, nopts=3)
    rec = packet_record(2, r)
    assert rec == {"frame": 2, "src": None, "dst": None, "sport": None, "dport": None,
                   "flags": None, "mptcp": [], "malformed": True}
    assert table_row(rec) == ("2", "-", "", "", "MALFORMED")


def test_table_row_lists_one_option_per_line():
    rec = {"frame": 7, "src": "::1", "dst": "::2", "sport": 5, "dport": 6, "flags": "A",
           "malformed": False,
           "mptcp": [{"subtype": "MP_PRIO", "backup": True, "address_id": None},
                     {"subtype": "REMOVE_ADDR", "address_ids": [1, 2]}]}
    assert table_row(rec) == ("7", "[::1]:5\n→ [::2]:6", "A",
                              "MP_PRIO backup\nREMOVE_ADDR address_ids=1,2", "")
    assert option_summary({"subtype": "MP_CAPABLE", "version": 1, "flags": 0x81}) == (
        "MP_CAPABLE version=1 flags=0x81")
