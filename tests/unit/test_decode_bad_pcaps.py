"""`mptcpctl decode` on captures that are odd rather than missing (test_decode_cli.py has the
missing/empty/text/linktype-101 files): cut-short headers, IPv4 and pcapng raw-IP link types,
huge snaplens and record lengths, frames past the XDP test-run limit, random bytes after a good
header. Always a decode or one `mptcpctl: ...` line with exit 2; never a traceback."""

import json
import random
import struct

import pytest
from click.testing import CliRunner

from cli.main import cli
from controller.datapath import TEST_RUN_MAX

SRC, DST = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2])
# MP_PRIO (backup, address id 7), padded: a tiny option the decode can name.
MP_PRIO = bytes([30, 4, 0x51, 7])


def ipv4_tcp(payload_len: int = 0, opts: bytes = MP_PRIO) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 2, (5 + len(opts) // 4) << 4, 0x10,
                      1000, 0, 0) + opts
    tot = 20 + len(tcp) + payload_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot & 0xFFFF, 0, 0, 64, 6, 0, SRC, DST)
    return ip + tcp + bytes(payload_len)


def ether(l3: bytes) -> bytes:
    return bytes(range(1, 13)) + b"\x08\x00" + l3


def classic(frames, linktype=1, snaplen=65535, lengths=None) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)
    for i, f in enumerate(frames):
        incl = len(f) if lengths is None else lengths[i]
        out += struct.pack("<IIII", i, 0, incl, max(incl, len(f))) + f
    return out


def ng_block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def pcapng(linktype: int, frames, snaplen=0) -> bytes:
    out = ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += ng_block(1, struct.pack("<HHI", linktype, 0, snaplen))
    for f in frames:
        out += ng_block(6, struct.pack("<IIIII", 0, 0, 0, len(f), len(f)) + f)
    return out


def run(path, *args):
    return CliRunner().invoke(cli, ["decode", str(path), *args])


def assert_one_line_error(result, *words):
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mptcpctl: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in result.stderr


def write(tmp_path, data: bytes, name="c.pcap"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- refused before BPF is loaded: no root needed ---------------------------------------


@pytest.mark.parametrize("linktype", [228, 101, 229, 0, 12])
def test_raw_ip_pcapng_is_refused_naming_the_link_type(tmp_path, linktype):
    path = write(tmp_path, pcapng(linktype, [ipv4_tcp()]), "raw.pcapng")
    assert_one_line_error(run(path, "--json"), f"unsupported link type {linktype}", str(path))


@pytest.mark.parametrize("linktype", [228, 229, 0])
def test_other_non_ethernet_classic_pcap_is_refused(tmp_path, linktype):
    path = write(tmp_path, classic([ipv4_tcp()], linktype=linktype))
    assert_one_line_error(run(path), f"unsupported link type {linktype}")


@pytest.mark.parametrize("cut", [4, 10, 23])
def test_pcap_header_cut_short_is_bad_input(tmp_path, cut):
    path = write(tmp_path, classic([ether(ipv4_tcp())])[:cut])
    assert_one_line_error(run(path, "--json"), "truncated", str(path))


@pytest.mark.parametrize("cut", [4, 8, 11])
def test_pcapng_section_header_cut_short_is_bad_input(tmp_path, cut):
    path = write(tmp_path, pcapng(1, [ether(ipv4_tcp())])[:cut], "c.pcapng")
    assert_one_line_error(run(path), str(path))


def test_pcapng_packet_before_any_interface_is_bad_input(tmp_path):
    shb = ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    f = ether(ipv4_tcp())
    epb = ng_block(6, struct.pack("<IIIII", 0, 0, 0, len(f), len(f)) + f)
    path = write(tmp_path, shb + epb, "c.pcapng")
    assert_one_line_error(run(path, "--json"), "undeclared interface")


# --- decoded: root and BPF ---------------------------------------------------------------


class SharedDecoder:
    """One loaded decoder for the whole module (compiling one per command takes ~1 s)."""

    def __init__(self):
        from controller.datapath import Decoder

        self.real = Decoder()
        self.decode = self.real.decode

    def close(self):
        pass


@pytest.fixture(scope="module")
def shared_decoder(root_bpf):
    d = SharedDecoder()
    yield d
    d.real.close()


@pytest.fixture
def decode_json(shared_decoder, monkeypatch):
    monkeypatch.setattr("controller.datapath.Decoder", lambda: shared_decoder)

    def go(path):
        result = run(path, "--json")
        assert result.exit_code == 0, (result.stderr, result.exception)
        assert "Traceback" not in result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()], result.stderr
    return go


def test_header_only_pcap_decodes_to_nothing(tmp_path, decode_json):
    assert decode_json(write(tmp_path, classic([]))) == ([], "")


@pytest.mark.parametrize("snaplen", [262144, 0x7FFFFFFF, 0xFFFFFFFF, 0])
def test_any_snaplen_in_the_header_decodes(tmp_path, decode_json, snaplen):
    records, err = decode_json(write(tmp_path, classic([ether(ipv4_tcp())], snaplen=snaplen)))
    assert err == ""
    assert [o["subtype"] for o in records[0]["mptcp"]] == ["MP_PRIO"]


@pytest.mark.parametrize("size", [TEST_RUN_MAX + 1, 9000, 65535, 262144])
def test_frames_past_the_test_run_limit_are_cut_and_decoded(tmp_path, decode_json, size):
    frame = ether(ipv4_tcp(payload_len=size - 14 - 44))
    assert len(frame) == size
    ng = write(tmp_path, pcapng(1, [frame], snaplen=262144), "big.pcapng")
    for path in (write(tmp_path, classic([frame, ether(ipv4_tcp())], snaplen=262144)), ng):
        records, err = decode_json(path)
        assert err == ""
        first = records[0]
        assert first["src"] == "192.0.2.1" and not first["malformed"]
        assert [o["subtype"] for o in first["mptcp"]] == ["MP_PRIO"]


def test_a_huge_record_length_is_a_truncation_warning(tmp_path, decode_json):
    good = ether(ipv4_tcp())
    data = classic([good, good], lengths=[len(good), 0xFFFFFFF0])
    records, err = decode_json(write(tmp_path, data))
    assert len(records) == 1
    assert len(err.splitlines()) == 1 and "truncated" in err


def test_frames_of_every_short_length_are_decoded_or_unparsed(tmp_path, decode_json):
    full = ether(ipv4_tcp())
    records, _ = decode_json(write(tmp_path, classic([full[:n] for n in range(len(full))])))
    assert len(records) == len(full)
    assert all(r["mptcp"] == [] for r in records)
    assert all(r["malformed"] for r in records[15:])  # IPv4 EtherType, header cut short


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_after_a_good_header_never_trace_back(tmp_path, shared_decoder,
                                                           monkeypatch, seed):
    monkeypatch.setattr("controller.datapath.Decoder", lambda: shared_decoder)
    rng = random.Random(seed)
    good = ether(ipv4_tcp())
    if seed % 2:
        data = pcapng(1, [good]) + rng.randbytes(rng.randint(1, 3000))
        path = write(tmp_path, data, "r.pcapng")
    else:
        data = classic([good]) + rng.randbytes(rng.randint(1, 3000))
        path = write(tmp_path, data)
    result = run(path, "--json")
    assert result.exit_code in (0, 2), (result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    if result.exit_code == 2:
        assert_one_line_error(result)
    else:
        assert len(result.stderr.splitlines()) <= 1
