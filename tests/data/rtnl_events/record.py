"""Records the rtnetlink messages tests/unit/test_properties_parsers.py mutates: what a monitor
subscribed like controller/netmon.py hears while a throwaway namespace gets links, addresses
and routes, then dumps of its links, addresses, routes and rules. Root: python -m ... or
`.venv/bin/python tests/data/rtnl_events/record.py` from the project root."""

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from controller import netmon  # noqa: E402
from controller.netns import entered  # noqa: E402

OUT = Path(__file__).resolve().parent
NS = f"mptcpctl-rec-{os.getpid()}"
NAMES = {16: "newlink", 17: "dellink", 20: "newaddr", 21: "deladdr", 24: "newroute",
         25: "delroute", 32: "newrule"}
STEPS = [
    "link add wifi0 type veth peer name wifi1",
    "link add lte0 type veth peer name lte1",
    "link set wifi1 up", "link set lte1 up", "link set wifi0 up", "link set lte0 up",
    "addr add 10.81.1.2/24 dev wifi0",
    "addr add 10.81.2.2/24 dev lte0",
    "addr add 10.81.3.2 peer 10.81.3.1/32 dev lte0",
    "-6 addr add 2001:db8:1::2/64 dev wifi0 nodad",
    "-6 addr add 2001:db8:2::2/64 dev lte0",
    "route add default via 10.81.1.1 dev wifi0",
    "route add 10.90.0.0/16 nexthop via 10.81.1.1 dev wifi0 nexthop via 10.81.2.1 dev lte0",
    "route add default via 10.81.2.1 dev lte0 table 100",
    "-6 route add default via 2001:db8:1::1 dev wifi0",
    "rule add from 10.81.2.2 lookup 100",
    "addr del 10.81.3.2 peer 10.81.3.1/32 dev lte0",
    "link set lte0 down",
    "link del lte0",
]
# RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE, RTM_GETRULE dumps of every family
DUMPS = (18, 22, 26, 34)
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300


def messages(buf: bytes):
    at = 0
    while at + 16 <= len(buf):
        length, mtype = struct.unpack_from("=IH", buf, at)
        if length < 16:
            return
        yield mtype, buf[at : at + length]
        at += (length + 3) & ~3


def drain(sock) -> list[tuple[int, bytes]]:
    out = []
    while True:
        try:
            out.extend(messages(sock.recv(1 << 16)))
        except BlockingIOError:
            return out


def main() -> None:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        with entered(NS):
            events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                   socket.NETLINK_ROUTE)
            events.bind((0, netmon.GROUPS))
            dumps = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        recorded = []
        for step in STEPS:
            subprocess.run(["ip", "-n", NS, *step.split()], check=True)
        recorded += drain(events)
        for n, mtype in enumerate(DUMPS):
            # nlmsghdr + rtgenmsg (family AF_UNSPEC), padded to 4 bytes
            dumps.send(struct.pack("=IHHIIB3x", 20, mtype, NLM_F_REQUEST | NLM_F_DUMP, n, 0, 0))
            done = False
            while not done:
                for t, msg in messages(dumps.recv(1 << 16)):
                    done = done or t == 3  # NLMSG_DONE
                    if t in NAMES:
                        recorded.append((t, msg))
        for old in OUT.glob("*.bin"):
            old.unlink()
        for n, (mtype, msg) in enumerate(recorded):
            (OUT / f"{n:02d}_{NAMES.get(mtype, mtype)}.bin").write_bytes(msg)
        print(f"{len(recorded)} messages in {OUT}")
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


if __name__ == "__main__":
    main()
