"""Hostile middleboxes for the lab's router (test-only, never shipped): nftables rules that
strip MPTCP options, drop ADD_ADDR or masquerade one path; a tc BPF program that shifts TCP
sequence numbers like an ISN-randomising firewall; and segmentation offloads switched on.
Each is a context manager that builds on enter and removes exactly what it built on exit."""

from __future__ import annotations

import contextlib
import subprocess

from controller import lab as labmod
from controller import netns

# Our nftables table on the router: one table, so teardown is one `delete table`.
NFT_TABLE = "mptcpctl_middlebox"
# tc ingress hook of a clsact qdisc (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)).
TC_INGRESS_PARENT = 0xFFFFFFF2

# A firewall that randomises ISNs: on packets from the client, seq += DELTA; on packets from
# the server, ack -= DELTA (when the ACK flag is set). The TCP checksum is patched with
# bpf_l4_csum_replace, which also does the right thing for CHECKSUM_PARTIAL skbs (veths).
# SACK blocks are left alone, as many such firewalls do: the sender finds them outside its
# window and ignores them, which costs recovery speed, not correctness.
SEQ_REWRITE_C = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>

#define TCP_SEQ_OFF 4
#define TCP_ACK_OFF 8
#define TCP_FLAGS_OFF 13
#define TCP_CSUM_OFF 16
#define TCP_FLAG_ACK 0x10

/* [0]: packets whose seq or ack was shifted (the test checks the firewall really acted). */
BPF_ARRAY(rewritten, u64, 1);

/* Offset of the TCP header from the Ethernet header, or -1 when this is not IPv4/IPv6 TCP
 * (IPv6 extension headers are not walked: the lab sends none). */
static __always_inline int tcp_offset(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return -1;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP)
            return -1;
        if (ip->frag_off & bpf_htons(0x1fff))
            return -1;
        return sizeof(*eth) + ip->ihl * 4;
    }
    if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
            return -1;
        return sizeof(*eth) + sizeof(*ip6);
    }
    return -1;
}

static __always_inline void shift_field(struct __sk_buff *skb, int tcp, int field, __s32 by)
{
    __u32 old_be, new_be;
    if (bpf_skb_load_bytes(skb, tcp + field, &old_be, 4) < 0)
        return;
    new_be = bpf_htonl(bpf_ntohl(old_be) + (__u32)by);
    bpf_l4_csum_replace(skb, tcp + TCP_CSUM_OFF, old_be, new_be, 4);
    bpf_skb_store_bytes(skb, tcp + field, &new_be, 4, 0);
}

static __always_inline void count(void)
{
    int zero = 0;
    u64 *n = rewritten.lookup(&zero);
    if (n)
        lock_xadd(n, 1);
}

int seq_from_client(struct __sk_buff *skb)
{
    int tcp = tcp_offset(skb);
    if (tcp < 0)
        return TC_ACT_OK;
    shift_field(skb, tcp, TCP_SEQ_OFF, DELTA);
    count();
    return TC_ACT_OK;
}

int ack_from_server(struct __sk_buff *skb)
{
    __u8 flags;
    int tcp = tcp_offset(skb);
    if (tcp < 0 || bpf_skb_load_bytes(skb, tcp + TCP_FLAGS_OFF, &flags, 1) < 0)
        return TC_ACT_OK;
    if (flags & TCP_FLAG_ACK) {
        shift_field(skb, tcp, TCP_ACK_OFF, -(DELTA));
        count();
    }
    return TC_ACT_OK;
}
"""


# An application-level gateway that rewrites payload without changing its length: it flips
# one byte (the first payload byte of the NTH data segment from the client) and patches the
# TCP checksum, so only MPTCP's DSS checksum can tell.
PAYLOAD_ALG_C = SEQ_REWRITE_C.split("static __always_inline void shift_field")[0] + r"""
BPF_ARRAY(seen, u64, 1);

int alg_from_client(struct __sk_buff *skb)
{
    int tcp = tcp_offset(skb);
    __u8 doff;
    if (tcp < 0 || bpf_skb_load_bytes(skb, tcp + 12, &doff, 1) < 0)
        return TC_ACT_OK;
    int payload = tcp + (doff >> 4) * 4;
    if (payload >= (int)skb->len)
        return TC_ACT_OK;
    int zero = 0;
    u64 *n = seen.lookup(&zero);
    if (!n)
        return TC_ACT_OK;
    *n += 1;
    if (*n != NTH)
        return TC_ACT_OK;
    __u16 old, new;
    if (bpf_skb_load_bytes(skb, payload, &old, 2) < 0)
        return TC_ACT_OK;
    new = old ^ bpf_htons(0x2000);
    bpf_l4_csum_replace(skb, tcp + TCP_CSUM_OFF, old, new, 2);
    bpf_skb_store_bytes(skb, payload, &new, 2, 0);
    u64 *done = rewritten.lookup(&zero);
    if (done)
        lock_xadd(done, 1);
    return TC_ACT_OK;
}
"""


def router(lab, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    cp = labmod.ns_exec(lab.router, list(argv), capture_output=True, text=True)
    if check and cp.returncode != 0:
        raise AssertionError(f"router: {' '.join(argv)} -> {cp.returncode}: {cp.stderr}")
    return cp


@contextlib.contextmanager
def nft_rules(lab, *rules: str, nat: bool = False):
    """Our table on the router with a forward chain (filter) or a postrouting chain (nat)
    holding `rules`; the table is deleted on exit."""
    hook = ("type nat hook postrouting priority srcnat;" if nat
            else "type filter hook forward priority filter;")
    chain = "post" if nat else "middle"
    script = "\n".join([f"table inet {NFT_TABLE} {{", f"  chain {chain} {{ {hook}",
                        *(f"    {r}" for r in rules), "  }", "}"])
    labmod.ns_exec(lab.router, ["nft", "-f", "-"], input=script, text=True, check=True)
    try:
        yield
    finally:
        router(lab, "nft", "delete", "table", "inet", NFT_TABLE, check=False)


def strip_mptcp_from_syn(lab):
    """MPTCP options removed (overwritten with NOPs) from SYN and SYN/ACK segments."""
    return nft_rules(lab, "tcp flags syn reset tcp option mptcp")


def strip_mptcp_after_handshake(lab):
    """SYN and SYN/ACK keep MP_CAPABLE; every later segment loses its MPTCP options (the
    third ACK too: a middlebox that learned the flow from the SYN strips from then on)."""
    return nft_rules(lab, "tcp flags & syn == 0 reset tcp option mptcp")


def drop_add_addr_towards_client(lab):
    """Segments carrying ADD_ADDR (the first MPTCP option's subtype; Linux sends ADD_ADDR
    alone on a pure ACK) are dropped on their way to the client's paths."""
    ifs = ", ".join(p.router_if for p in lab.paths.values())
    return nft_rules(lab, f"oifname {{ {ifs} }} tcp option mptcp subtype 3 drop")


def masquerade_path(lab, name: str):
    """NAT on one path: the client's address on `name` is masqueraded towards the server."""
    p = lab.paths[name]
    return nft_rules(lab, f"ip saddr {p.client_addr} oifname {lab.router_server_if} masquerade",
                     nat=True)


@contextlib.contextmanager
def rewrite_sequence_numbers(lab, delta: int = 0x1234567):
    """The ISN-randomising firewall of SEQ_REWRITE_C, on tc ingress of every router port.
    Yields a function returning how many packets it rewrote so far."""
    from bcc import BPF
    from pyroute2 import IPRoute

    bpf = BPF(text=SEQ_REWRITE_C.encode(), cflags=[f"-DDELTA={delta}", "-Wno-unused-function"])
    ports = [(p.router_if, "seq_from_client") for p in lab.paths.values()]
    ports.append((lab.router_server_if, "ack_from_server"))
    attached = []
    try:
        with netns.entered(lab.router), IPRoute() as ipr:
            for ifname, fn_name in ports:
                fn = bpf.load_func(fn_name.encode(), BPF.SCHED_CLS)
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.tc("add", "clsact", idx)
                attached.append(ifname)
                ipr.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name=fn_name,
                       parent=TC_INGRESS_PARENT, classid=1, direct_action=True)
        yield lambda: sum(v.value for v in bpf[b"rewritten"].values())
    finally:
        for ifname in attached:
            router(lab, "tc", "qdisc", "del", "dev", ifname, "clsact", check=False)
        bpf.cleanup()


# tc priority of the ALG's ingress filter, so that it can leave alone a clsact qdisc it found
# (the DSS checksum fix's, on a gateway running `mptcpctl up --fix-dss-checksum`).
ALG_PRIO = 0xA16


@contextlib.contextmanager
def modify_payload(lab, nth: int = 200):
    """PAYLOAD_ALG_C on tc ingress of the router's client-facing ports (one count over all
    paths). Yields a function returning how many segments it modified so far. A clsact qdisc
    already there is shared, and only the ALG's filter is removed from it on exit."""
    from bcc import BPF
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    bpf = BPF(text=PAYLOAD_ALG_C.encode(), cflags=[f"-DNTH={nth}", "-Wno-unused-function"])
    attached = []   # (ifname, whether we added its clsact)
    try:
        with netns.entered(lab.router), IPRoute() as ipr:
            for p in lab.paths.values():
                fn = bpf.load_func(b"alg_from_client", BPF.SCHED_CLS)
                idx = ipr.link_lookup(ifname=p.router_if)[0]
                try:
                    ipr.tc("add", "clsact", idx)
                    added = True
                except NetlinkError as e:
                    if e.code != 17:  # EEXIST
                        raise
                    added = False
                attached.append((p.router_if, added))
                ipr.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name="alg_from_client",
                       parent=TC_INGRESS_PARENT, prio=ALG_PRIO, classid=1, direct_action=True)
        yield lambda: sum(v.value for v in bpf[b"rewritten"].values())
    finally:
        for ifname, added in attached:
            if added:
                router(lab, "tc", "qdisc", "del", "dev", ifname, "clsact", check=False)
            else:
                router(lab, "tc", "filter", "del", "dev", ifname, "ingress", "pref",
                       str(ALG_PRIO), check=False)
        bpf.cleanup()


@contextlib.contextmanager
def offloads_on(lab):
    """TSO, GSO and GRO on along every path (the lab builds them off): segments are
    coalesced at each receiver and split again at each sender."""
    ends = [(lab.client, p.client_if) for p in lab.paths.values()]
    ends += [(lab.router, p.router_if) for p in lab.paths.values()]
    ends += [(lab.router, lab.router_server_if), (lab.server, lab.server_if)]

    def toggle(state: str) -> None:
        for ns, dev in ends:
            labmod.ns_exec(ns, ["ethtool", "-K", dev, "gro", state, "tso", state, "gso", state],
                           capture_output=True, check=state == "on")

    toggle("on")
    try:
        yield
    finally:
        toggle("off")
