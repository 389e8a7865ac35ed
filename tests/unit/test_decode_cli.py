"""`mptcpctl decode FILE` on files it cannot use: exit code 2 and one line on stderr, no
traceback, and no BPF loaded (so these need no root). A good file without root: exit 3."""

import struct

import pytest
from click.testing import CliRunner

from cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, ["decode", *args])


def pcap_with_linktype(linktype: int) -> bytes:
    frame = bytes(12) + b"\x08\x00" + bytes(20)
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    return hdr + struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame


def assert_one_line_error(result, code, *words):
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mptcpctl: ")
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_missing_file_is_bad_input(tmp_path, json_flag):
    path = tmp_path / "nope.pcap"
    assert_one_line_error(run(str(path), *json_flag), 2, "no such file", str(path))


def test_empty_file_is_bad_input(tmp_path):
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    assert_one_line_error(run(str(path)), 2, "empty", str(path))


def test_text_file_is_not_a_pcap(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a capture\n" * 10)
    assert_one_line_error(run(str(path), "--json"), 2, "not a pcap", str(path))


def test_unsupported_link_type_is_named(tmp_path):
    path = tmp_path / "raw.pcap"
    path.write_bytes(pcap_with_linktype(101))
    assert_one_line_error(run(str(path)), 2, f"unsupported link type 101 in {path}")


def test_directory_is_bad_input(tmp_path):
    assert_one_line_error(run(str(tmp_path)), 2)


def test_good_file_without_root_is_a_missing_feature(tmp_path, monkeypatch):
    path = tmp_path / "ok.pcap"
    path.write_bytes(pcap_with_linktype(1))
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = run(str(path), "--json")
    assert result.exit_code == 3, result.output
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_decode_needs_a_file_argument():
    result = run()
    assert result.exit_code == 2
