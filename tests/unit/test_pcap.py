"""controller/pcap.py: classic pcap in both byte orders and timestamp resolutions, pcapng with
several interfaces and skipped blocks, Linux cooked captures, truncated and unusable files."""

import struct

import pytest

from controller import pcap
from controller.errors import BadInput

ETH_FRAME = bytes.fromhex("020000000002020000000001") + b"\x08\x00" + b"IPV4-PAYLOAD"
IP_PAYLOAD = b"\x45" + bytes(19)


def classic(frames, linktype=1, endian="<", nano=False) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for i, f in enumerate(frames):
        out += struct.pack(endian + "IIII", 1700000000 + i, 123, len(f), len(f)) + f
    return out


def ng_block(btype, body, endian="<") -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack(endian + "II", btype, n) + body + struct.pack(endian + "I", n)


def ng_shb(endian="<") -> bytes:
    return ng_block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)


def ng_idb(linktype, endian="<") -> bytes:
    return ng_block(1, struct.pack(endian + "HHI", linktype, 0, 65535), endian)


def ng_epb(iface, data, endian="<") -> bytes:
    return ng_block(6, struct.pack(endian + "IIIII", iface, 0, 0, len(data), len(data)) + data,
                    endian)


def ng_spb(data, endian="<") -> bytes:
    return ng_block(3, struct.pack(endian + "I", len(data)) + data, endian)


def sll(proto: int, payload: bytes) -> bytes:
    # packet type, ARPHRD, address length, 8 address bytes, protocol
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6 + b"\0\0", proto) + payload


def sll2(proto: int, payload: bytes) -> bytes:
    # protocol, reserved, ifindex, ARPHRD, packet type, address length, 8 address bytes
    return struct.pack("!HHIHBB8s", proto, 0, 3, 1, 4, 6, b"\x02" * 6 + b"\0\0") + payload


def eth_of(proto: int, payload: bytes) -> bytes:
    return bytes(12) + struct.pack("!H", proto) + payload


def frames_of(path):
    cap = pcap.open_capture(path)
    return list(cap.frames()), cap.warning


def write(tmp_path, data, name="c.pcap"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_pcap_reads_in_either_byte_order_and_resolution(tmp_path, endian, nano):
    p = write(tmp_path, classic([ETH_FRAME, ETH_FRAME[:20]], endian=endian, nano=nano))
    got, warning = frames_of(p)
    assert got == [(1, 1, ETH_FRAME), (2, 1, ETH_FRAME[:20])]
    assert warning is None


def test_classic_pcap_with_no_packets_yields_nothing(tmp_path):
    assert frames_of(write(tmp_path, classic([]))) == ([], None)


def test_sll_becomes_ethernet_with_its_protocol(tmp_path):
    p = write(tmp_path, classic([sll(0x0800, IP_PAYLOAD), sll(0x86DD, b"six")], linktype=113))
    got, _ = frames_of(p)
    assert got == [(1, 113, eth_of(0x0800, IP_PAYLOAD)), (2, 113, eth_of(0x86DD, b"six"))]


def test_sll2_becomes_ethernet_with_its_protocol(tmp_path):
    p = write(tmp_path, classic([sll2(0x86DD, IP_PAYLOAD)], linktype=276))
    got, _ = frames_of(p)
    assert got == [(1, 276, eth_of(0x86DD, IP_PAYLOAD))]


def test_cooked_frame_shorter_than_its_header_becomes_an_empty_ethernet_frame(tmp_path):
    got, _ = frames_of(write(tmp_path, classic([b"\x00\x01"], linktype=113)))
    assert got == [(1, 113, bytes(14))]


def test_to_ethernet_leaves_ethernet_untouched():
    assert pcap.to_ethernet(1, ETH_FRAME) is ETH_FRAME


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_reads_epb_and_spb_per_interface_link_type_and_skips_other_blocks(
    tmp_path, endian
):
    data = (
        ng_shb(endian)
        + ng_idb(1, endian)
        + ng_idb(113, endian)
        + ng_block(4, b"\x00\x00\x00\x00", endian)  # name resolution block
        + ng_epb(0, ETH_FRAME, endian)
        + ng_epb(1, sll(0x0800, IP_PAYLOAD), endian)
        + ng_spb(ETH_FRAME[:15], endian)  # odd length: padded on disk
        + ng_block(5, struct.pack(endian + "III", 0, 0, 0), endian)  # interface statistics
        + ng_block(0x40000BAD, b"custom", endian)
    )
    got, warning = frames_of(write(tmp_path, data, "c.pcapng"))
    assert got == [
        (1, 1, ETH_FRAME),
        (2, 113, eth_of(0x0800, IP_PAYLOAD)),
        (3, 1, ETH_FRAME[:15]),
    ]
    assert warning is None


def test_pcapng_new_section_resets_interfaces_and_may_change_byte_order(tmp_path):
    data = (
        ng_shb("<") + ng_idb(276, "<") + ng_epb(0, sll2(0x0800, b"a"), "<")
        + ng_shb(">") + ng_idb(1, ">") + ng_epb(0, ETH_FRAME, ">")
    )
    got, _ = frames_of(write(tmp_path, data, "c.pcapng"))
    assert got == [(1, 276, eth_of(0x0800, b"a")), (2, 1, ETH_FRAME)]


def test_pcapng_packet_on_an_undeclared_interface_is_bad_input(tmp_path):
    data = ng_shb() + ng_idb(1) + ng_epb(1, ETH_FRAME)
    with pytest.raises(BadInput, match="undeclared interface 1"):
        frames_of(write(tmp_path, data, "c.pcapng"))


def test_pcapng_unsupported_link_type_names_it_and_the_file(tmp_path):
    p = write(tmp_path, ng_shb() + ng_idb(1) + ng_idb(101) + ng_epb(0, ETH_FRAME), "c.pcapng")
    with pytest.raises(BadInput, match=f"^unsupported link type 101 in {p}$"):
        frames_of(p)


def test_classic_unsupported_link_type_fails_at_open(tmp_path):
    p = write(tmp_path, classic([ETH_FRAME], linktype=101))
    with pytest.raises(BadInput, match=f"^unsupported link type 101 in {p}$"):
        pcap.open_capture(p)


@pytest.mark.parametrize("cut", [1, 10, 15, 16 + len(ETH_FRAME) - 1])
def test_truncated_last_classic_record_keeps_whole_frames_and_warns(tmp_path, cut):
    whole = classic([ETH_FRAME, ETH_FRAME])
    last = 16 + len(ETH_FRAME)
    p = write(tmp_path, whole[: len(whole) - last + cut])
    got, warning = frames_of(p)
    assert got == [(1, 1, ETH_FRAME)]
    assert warning is not None and "truncated" in warning and "\n" not in warning


@pytest.mark.parametrize("cut", [4, 8, 20])
def test_truncated_last_pcapng_block_keeps_whole_frames_and_warns(tmp_path, cut):
    data = ng_shb() + ng_idb(1) + ng_epb(0, ETH_FRAME) + ng_epb(0, ETH_FRAME)[:cut]
    got, warning = frames_of(write(tmp_path, data, "c.pcapng"))
    assert got == [(1, 1, ETH_FRAME)]
    assert "truncated" in warning


def test_corrupt_pcapng_block_length_is_bad_input(tmp_path):
    data = ng_shb() + ng_idb(1) + struct.pack("<II", 6, 5)
    with pytest.raises(BadInput, match="corrupt pcapng block"):
        frames_of(write(tmp_path, data, "c.pcapng"))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"", "is empty"),
        (b"hello, this is text and not a capture\n", "not a pcap or pcapng capture"),
        (b"\xd4\xc3", "not a pcap or pcapng capture"),
        (struct.pack("<I", 0xA1B2C3D4) + b"\x02\x00", "pcap file header is truncated"),
    ],
)
def test_unusable_files_are_bad_input_with_one_line(tmp_path, content, message):
    p = tmp_path / "x.pcap"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(BadInput, match=message) as e:
        pcap.open_capture(p)
    assert "\n" not in str(e.value)


def test_directory_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="directory"):
        pcap.open_capture(tmp_path)
