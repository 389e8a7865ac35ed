"""`mptcpctl decode FILE` end to end as root: a capture written from the decoder table's frames
comes out as one JSON object per packet (or a table), a truncated last record as a warning."""

import json

import pytest
from click.testing import CliRunner
from scapy.layers.l2 import CookedLinux, Ether
from scapy.packet import Raw
from scapy.utils import wrpcap
from test_decode_table import CASES

from cli.main import cli

PICK = [c for c in CASES if c.desc in {
    "MP_CAPABLE 24 (+ checksum)", "DSS + ADD_ADDR echo", "IPv6 DSS",
    "malformed: DSS shorter than its flags (A+M in 8 bytes)", "ARP is not parsed",
}]


@pytest.fixture(autouse=True)
def _root(root_bpf):
    pass


@pytest.fixture
def capture(tmp_path):
    path = tmp_path / "mix.pcap"
    wrpcap(str(path), [Ether(c.frame) for c in PICK])
    return path


def expected(i, c):
    return {**c.expect, "frame": i}


def test_json_is_one_object_per_packet_in_frame_order(capture):
    assert len(PICK) == 5
    result = CliRunner().invoke(cli, ["decode", str(capture), "--json"])
    assert result.exit_code == 0, result.stderr
    got = [json.loads(line) for line in result.stdout.splitlines()]
    assert got == [expected(i, c) for i, c in enumerate(PICK, 1)]
    assert result.stderr == ""


def test_table_shows_every_frame_and_marks_the_malformed_one(capture):
    result = CliRunner().invoke(cli, ["decode", str(capture)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    assert "MP_CAPABLE" in result.stdout and "ADD_ADDR" in result.stdout
    assert result.stdout.count("MALFORMED") == 1
    assert "192.0.2.1:40000" in result.stdout and "[2001:db8::1]:40000" in result.stdout


def test_truncated_last_record_decodes_the_rest_and_warns_once(capture):
    data = capture.read_bytes()
    capture.write_bytes(data[:-5])
    result = CliRunner().invoke(cli, ["decode", str(capture), "--json"])
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(PICK) - 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "truncated" in lines[0]


def test_linux_cooked_capture_decodes_like_ethernet(tmp_path):
    c = PICK[0]
    ip = Ether(c.frame).payload
    path = tmp_path / "sll.pcap"
    wrpcap(str(path), [CookedLinux(proto=0x0800) / ip])
    result = CliRunner().invoke(cli, ["decode", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    assert [json.loads(x) for x in result.stdout.splitlines()] == [c.expect]


def test_frame_shorter_than_ethernet_is_reported_unparsed(tmp_path):
    path = tmp_path / "short.pcap"
    wrpcap(str(path), [Raw(b"\x01\x02\x03")], linktype=1)
    result = CliRunner().invoke(cli, ["decode", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    rec = json.loads(result.stdout)
    assert rec["frame"] == 1 and rec["src"] is None and rec["mptcp"] == []
