"""Capture files for `mptcpctl decode`: classic pcap (either byte order, micro- or nanosecond
timestamps) and pcapng, read with the struct module only. Every frame comes out as Ethernet:
Linux cooked captures (SLL, SLL2) get a 14-byte Ethernet header with zero MACs."""

import struct
from collections.abc import Iterator
from pathlib import Path

from .errors import BadInput

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

# Classic pcap magics as read little-endian: the first four bytes of the file.
_PCAP_MAGICS = {
    0xA1B2C3D4: "<",  # microseconds, written little-endian
    0xA1B23C4D: "<",  # nanoseconds, little-endian
    0xD4C3B2A1: ">",  # microseconds, big-endian
    0x4D3CB2A1: ">",  # nanoseconds, big-endian
}
_PCAP_HDR_LEN = 24
_PCAP_REC_LEN = 16

# pcapng block types (draft-ietf-opsawg-pcapng).
_NG_SHB = 0x0A0D0D0A
_NG_IDB = 0x00000001
_NG_SPB = 0x00000003
_NG_EPB = 0x00000006
_NG_BYTE_ORDER_MAGIC = 0x1A2B3C4D

# Cooked header length and offset of the big-endian protocol (EtherType) inside it.
_COOKED = {LINKTYPE_LINUX_SLL: (16, 14), LINKTYPE_LINUX_SLL2: (20, 0)}
_ZERO_MACS = bytes(12)


def to_ethernet(linktype: int, data: bytes) -> bytes:
    """The frame as Ethernet: unchanged for Ethernet, the cooked header replaced for SLL/SLL2.
    A cooked frame too short for its header becomes an Ethernet header with EtherType 0."""
    if linktype == LINKTYPE_ETHERNET:
        return data
    hdr_len, proto_at = _COOKED[linktype]
    if len(data) < hdr_len:
        return _ZERO_MACS + b"\x00\x00"
    return _ZERO_MACS + data[proto_at : proto_at + 2] + data[hdr_len:]


class Capture:
    """One capture file. Opening checks the file header (BadInput if it is not a capture);
    frames() yields (frame number from 1, original link type, Ethernet bytes). After frames()
    is exhausted, `warning` holds a one-line message if the last record was cut short."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.warning: str | None = None
        try:
            with open(self.path, "rb") as f:
                head = f.read(_PCAP_HDR_LEN)
        except FileNotFoundError:
            raise BadInput(f"no such file: {self.path}") from None
        except IsADirectoryError:
            raise BadInput(f"{self.path} is a directory, not a capture file") from None
        except OSError as e:
            raise BadInput(f"cannot read {self.path}: {e.strerror}") from None
        if not head:
            raise BadInput(f"{self.path} is empty")
        magic = struct.unpack("<I", head[:4])[0] if len(head) >= 4 else None
        if magic in _PCAP_MAGICS:
            self.format = "pcap"
            if len(head) < _PCAP_HDR_LEN:
                raise BadInput(f"{self.path}: pcap file header is truncated")
            self._endian = _PCAP_MAGICS[magic]
            # Link type: the low 16 bits (the upper bits may carry FCS information).
            self.linktype = struct.unpack(self._endian + "I", head[20:24])[0] & 0xFFFF
            self._check_linktype(self.linktype)
        elif magic == _NG_SHB:
            self.format = "pcapng"
            if len(head) < 12:
                raise BadInput(f"{self.path}: pcapng section header is truncated")
            self.linktype = None
        else:
            raise BadInput(f"{self.path} is not a pcap or pcapng capture")

    def _check_linktype(self, linktype: int) -> None:
        if linktype != LINKTYPE_ETHERNET and linktype not in _COOKED:
            raise BadInput(f"unsupported link type {linktype} in {self.path}")

    def _truncated(self, count: int) -> None:
        self.warning = (
            f"{self.path}: last record is truncated; decoded the {count} whole frame(s) before it"
        )

    def frames(self) -> Iterator[tuple[int, int, bytes]]:
        self.warning = None
        with open(self.path, "rb") as f:
            if self.format == "pcap":
                yield from self._pcap_frames(f)
            else:
                yield from self._pcapng_frames(f)

    def _pcap_frames(self, f) -> Iterator[tuple[int, int, bytes]]:
        f.seek(_PCAP_HDR_LEN)
        rec = struct.Struct(self._endian + "IIII")
        number = 0
        while True:
            hdr = f.read(_PCAP_REC_LEN)
            if not hdr:
                return
            if len(hdr) < _PCAP_REC_LEN:
                self._truncated(number)
                return
            _, _, incl_len, _ = rec.unpack(hdr)
            data = f.read(incl_len)
            if len(data) < incl_len:
                self._truncated(number)
                return
            number += 1
            yield number, self.linktype, to_ethernet(self.linktype, data)

    def _pcapng_frames(self, f) -> Iterator[tuple[int, int, bytes]]:
        endian = "<"
        linktypes: list[int] = []  # by interface id, for the current section
        number = 0
        offset = 0
        while True:
            head = f.read(8)
            if not head:
                return
            if len(head) < 8:
                self._truncated(number)
                return
            btype_raw = struct.unpack("<I", head[:4])[0]
            if btype_raw == _NG_SHB:
                # A new section: its byte-order magic decides how everything after it reads.
                bom = f.read(4)
                if len(bom) < 4:
                    self._truncated(number)
                    return
                if struct.unpack("<I", bom)[0] == _NG_BYTE_ORDER_MAGIC:
                    endian = "<"
                elif struct.unpack(">I", bom)[0] == _NG_BYTE_ORDER_MAGIC:
                    endian = ">"
                else:
                    raise BadInput(f"{self.path}: bad pcapng byte-order magic at offset {offset}")
                linktypes = []
                f.seek(offset + 8)
            btype, blen = struct.unpack(endian + "II", head)
            if blen < 12 or blen % 4:
                raise BadInput(f"{self.path}: corrupt pcapng block at offset {offset}")
            body = f.read(blen - 8)
            if len(body) < blen - 8:
                self._truncated(number)
                return
            offset += blen
            body = body[:-4]  # the trailing copy of the block length
            if btype == _NG_IDB:
                if len(body) < 8:
                    raise BadInput(f"{self.path}: corrupt pcapng interface block")
                linktype = struct.unpack(endian + "H", body[:2])[0]
                self._check_linktype(linktype)
                linktypes.append(linktype)
                continue
            if btype == _NG_EPB:
                if len(body) < 20:
                    raise BadInput(f"{self.path}: corrupt pcapng packet block")
                iface, _, _, caplen, _ = struct.unpack(endian + "IIIII", body[:20])
                data = body[20 : 20 + caplen]
            elif btype == _NG_SPB:
                if len(body) < 4:
                    raise BadInput(f"{self.path}: corrupt pcapng packet block")
                iface = 0
                origlen = struct.unpack(endian + "I", body[:4])[0]
                data = body[4 : 4 + origlen]
            else:
                continue  # SHB (handled above), name resolution, statistics, custom...
            if iface >= len(linktypes):
                raise BadInput(f"{self.path}: packet refers to undeclared interface {iface}")
            number += 1
            yield number, linktypes[iface], to_ethernet(linktypes[iface], data)


def open_capture(path: str | Path) -> Capture:
    """Open and check a capture file (BadInput with a one-line message if unusable)."""
    return Capture(path)
