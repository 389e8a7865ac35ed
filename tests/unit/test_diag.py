"""Parsing `ss -MtinH` output into MPTCP connections and their subflows (controller/diag.py).
The CLIENT/SERVER fixtures are real: two namespaces, veth pairs 10.83.1.0/24 and 10.83.2.0/24,
an in-kernel PM `subflow` endpoint on the client's second address (kernel 6.18, iproute2 6.1)."""

from controller import diag


def lines(*parts: str) -> str:
    """ss info lines are long: fixtures hold them in pieces joined by single spaces."""
    return " ".join(parts)


CLIENT = "\n".join([
    "tcp ESTAB 0 0 10.83.1.1:41146 10.83.1.2:5201",
    "\t " + lines(
        "bbr wscale:10,10 rto:204 rtt:0.044/0.012 mss:1448 pmtu:1500 rcvmss:536",
        "advmss:1448 cwnd:172 ssthresh:144 bytes_sent:960000 bytes_acked:960001",
        "segs_out:762 segs_in:92 data_segs_out:760",
        "bbr:(bw:15445333096bps,mrtt:0.002,pacing_gain:1.25,cwnd_gain:2) send",
        "45282909091bps lastsnd:24592 lastrcv:24592 lastack:24592 pacing_rate",
        "19113599712bps delivery_rate 3309714280bps delivered:761 rcv_space:14480",
        "rcv_ssthresh:64088 minrtt:0.002 snd_wnd:1046528 tcp-ulp-mptcp flags:Mmec",
        "token:0000(id:0)/4624e16b(id:0) seq:6eca1c7789ce6363 sfseq:1 ssnoff:846c312c",
        "maplen:0",
    ),
    "tcp ESTAB 0 0 10.83.2.1%zzc2:33539 10.83.1.2:5201",
    "\t " + lines(
        "skmem:(r0,rb131072,t0,tb336384,f1688,w125288,o0,bl0,d0)",
        "bbr wscale:10,10 rto:204 rtt:0.01/0.008 mss:1448 pmtu:1500 rcvmss:536",
        "advmss:1448 cwnd:42 bytes_sent:40000 bytes_acked:40001 segs_out:34 segs_in:7",
        "data_segs_out:32",
        "bbr:(bw:46336000000bps,mrtt:0.002,pacing_gain:2.88672,cwnd_gain:2.88672) send",
        "48652800000bps lastsnd:24592 lastrcv:24592 lastack:24592 pacing_rate",
        "132421410000bps delivery_rate 46336000000bps delivered:33 rcv_space:14480",
        "rcv_ssthresh:64088 minrtt:0.002 snd_wnd:1015808 tcp-ulp-mptcp flags:Jjec",
        "token:6e3a4ae3(id:0)/4624e16b(id:1) seq:6eca1c7789ce6363 sfseq:0 ssnoff:b2ec434e",
        "maplen:0",
    ),
    "tcp ESTAB 0 0 [fd83:1::1]:36624 [fd83:1::2]:5202",
    "\t " + lines(
        "bbr wscale:10,10 rto:204 rtt:0.099/0.168 mss:1428 pmtu:1500 rcvmss:536",
        "advmss:1428 cwnd:356 ssthresh:144 bytes_sent:1006392 bytes_acked:1006393",
        "segs_out:787 segs_in:63 data_segs_out:785",
        "bbr:(bw:262752000000bps,mrtt:0.002,pacing_gain:1,cwnd_gain:2) send",
        "41080242424bps lastsnd:5884 lastrcv:5896 lastack:5884 pacing_rate",
        "260124480000bps delivery_rate 2856000000bps delivered:786 busy:4ms",
        "rcv_space:14280 rcv_ssthresh:64108 minrtt:0.002 snd_wnd:1464320 tcp-ulp-mptcp",
        "flags:Mmec token:0000(id:0)/330883ca(id:0) seq:dc3f5e54eecaa2a0 sfseq:1",
        "ssnoff:56429a53 maplen:0",
    ),
    "mptcp ESTAB 0 0 10.83.1.1:41146 10.83.1.2:5201",
    "\t " + lines(
        "subflows:1 subflows_max:2 add_addr_accepted_max:2 remote_key token:4624e16b",
        "write_seq:7a0c51a21c7da1f2 snd_una:7a0c51a21c7da1f2 rcv_nxt:6eca1c7789ce6363",
    ),
    "mptcp ESTAB 0 0 [fd83:1::1]:36624 [fd83:1::2]:5202",
    "\t " + lines(
        "subflows_max:2 add_addr_accepted_max:2 remote_key token:330883ca",
        "write_seq:7da960580db99a1f snd_una:7da960580db99a1f rcv_nxt:dc3f5e54eecaa2a0",
    ),
])

SERVER = "\n".join([
    "tcp ESTAB 0 0 10.83.1.2:5201 10.83.2.1:33539",
    "\t " + lines(
        "bbr wscale:10,10 rto:204 rtt:1/0.5 ato:40 mss:1448 pmtu:1500 rcvmss:1424",
        "advmss:1448 cwnd:10 bytes_received:40000 segs_out:6 segs_in:34 data_segs_in:32",
        "bbr:(bw:0bps,mrtt:1) send 115840000bps lastsnd:24600 lastrcv:24600 lastack:24600",
        "pacing_rate 331053208bps delivered:1 app_limited rcv_space:14480",
        "rcv_ssthresh:117248 minrtt:1 snd_wnd:64512 tcp-ulp-mptcp flags:Jec",
        "token:0000(id:1)/6e3a4ae3(id:0) seq:7a0c51a21c7d7ae2 sfseq:7531 ssnoff:1af867f2",
        "maplen:2710",
    ),
    "tcp ESTAB 0 0 10.83.1.2:5201 10.83.1.1:41146",
    "\t " + lines(
        "bbr wscale:10,10 rto:204 rtt:0.024/0.012 ato:40 mss:1448 pmtu:1500 rcvmss:1424",
        "advmss:1448 cwnd:10 bytes_received:960000 segs_out:91 segs_in:762",
        "data_segs_in:760 bbr:(bw:0bps,mrtt:0.024) send 4826666667bps lastsnd:24600",
        "lastrcv:24600 lastack:24600 pacing_rate 13793895552bps delivered:1 app_limited",
        "rcv_rtt:0.057 rcv_space:65536 rcv_ssthresh:1048616 minrtt:0.024 snd_wnd:64512",
        "tcp-ulp-mptcp flags:Mec token:0000(id:0)/6e3a4ae3(id:0) seq:7a0c51a21c7d53d2",
        "sfseq:e7ef1 ssnoff:55445735 maplen:2710",
    ),
    "tcp ESTAB 0 0 [fd83:1::2]:5202 [fd83:1::1]:36624",
    "\t " + lines(
        "bbr wscale:10,10 rto:204 rtt:0.023/0.011 ato:40 mss:1428 pmtu:1500 rcvmss:1404",
        "advmss:1428 cwnd:10 bytes_received:1006392 segs_out:62 segs_in:787",
        "data_segs_in:785 bbr:(bw:0bps,mrtt:0.023) send 4966956522bps lastsnd:5904",
        "lastrcv:5892 lastack:5892 pacing_rate 14194823016bps delivered:1 app_limited",
        "rcv_rtt:0.136 rcv_space:360000 rcv_ssthresh:1463889 minrtt:0.023 snd_wnd:64512",
        "tcp-ulp-mptcp flags:Mec token:0000(id:0)/f0131f21(id:0) seq:7da960580db6b3ef",
        "sfseq:f4241 ssnoff:d20f4b maplen:18f8",
    ),
    "mptcp ESTAB 0 0 10.83.1.2:5201 10.83.1.1:41146",
    "\t " + lines(
        "subflows:1 subflows_max:2 add_addr_accepted_max:2 remote_key token:6e3a4ae3",
        "write_seq:6eca1c7789ce6363 snd_una:6eca1c7789ce6363 rcv_nxt:7a0c51a21c7da1f2",
    ),
    "mptcp ESTAB 0 0 [fd83:1::2]:5202 [fd83:1::1]:36624",
    "\t " + lines(
        "subflows_max:2 add_addr_accepted_max:2 remote_key token:f0131f21",
        "write_seq:dc3f5e54eecaa2a0 snd_una:dc3f5e54eecaa2a0 rcv_nxt:7da960580db99a1f",
    ),
])

# Hand-made from ss's formats (not captured): a bound IPv6 subflow, a backup subflow with
# retransmissions and unit-suffixed rates (ss without -n), a listener, a plain TCP socket.
SYNTHETIC = "\n".join([
    "tcp ESTAB 0 0 [fd83:2::1]%eth1:40000 [fd83:1::2]:443",
    "\t cubic rtt:12.5/3 cwnd:7 bytes_sent:100 bytes_acked:90 bytes_received:5 retrans:1/4 "
    "delivery_rate 1.5Mbps tcp-ulp-mptcp flags:Jjbec token:abcd0001(id:0)/12345678(id:2)",
    "tcp LISTEN 0 128 10.83.1.2:5201 0.0.0.0:*",
    "\t bbr cwnd:10 tcp-ulp-mptcp",
    "tcp ESTAB 0 0 10.83.9.1:22 10.83.9.2:50000",
    "\t cubic rtt:1/1 cwnd:10 bytes_sent:1",
])


def test_client_connection_lists_its_local_token_and_extra_subflow():
    conns, _ = diag.parse_ss(CLIENT)
    v4 = next(c for c in conns if c.family == 4)
    assert (v4.token, v4.state, v4.local, v4.lport, v4.remote, v4.rport, v4.extra_subflows) == (
        0x4624E16B, "ESTAB", "10.83.1.1", 41146, "10.83.1.2", 5201, 1)
    v6 = next(c for c in conns if c.family == 6)
    assert (v6.token, v6.local, v6.remote, v6.rport, v6.extra_subflows) == (
        0x330883CA, "fd83:1::1", "fd83:1::2", 5202, 0)


def test_client_subflows_carry_the_connection_token_and_ids():
    conns, subs = diag.parse_ss(CLIENT)
    token = next(c.token for c in conns if c.family == 4)
    mine = [s for s in subs if s.token == token]
    assert len(mine) == 2
    initial = next(s for s in mine if s.loc_id == 0)
    join = next(s for s in mine if s.loc_id == 1)
    assert (initial.local, initial.lport, initial.dev, initial.remote_token) == (
        "10.83.1.1", 41146, None, 0)
    assert (join.local, join.lport, join.dev, join.remote, join.rport) == (
        "10.83.2.1", 33539, "zzc2", "10.83.1.2", 5201)
    assert (join.remote_token, join.rem_id, join.flags) == (0x6E3A4AE3, 0, "Jjec")
    assert (join.rtt_ms, join.cwnd, join.bytes_sent, join.bytes_acked) == (0.01, 42, 40000, 40001)
    assert join.delivery_rate == 46336000000
    assert (join.sndbuf, initial.sndbuf) == (336384, None)
    assert not join.backup and not join.peer_backup and join.retrans == 0


def test_ipv6_endpoints_lose_their_brackets():
    _, subs = diag.parse_ss(CLIENT)
    v6 = next(s for s in subs if s.family == 6)
    assert (v6.local, v6.lport, v6.remote, v6.rport) == ("fd83:1::1", 36624, "fd83:1::2", 5202)


def test_server_side_sees_the_same_connection_under_its_own_token():
    conns, subs = diag.parse_ss(SERVER)
    v4 = next(c for c in conns if c.family == 4)
    assert (v4.token, v4.local, v4.lport, v4.remote, v4.rport) == (
        0x6E3A4AE3, "10.83.1.2", 5201, "10.83.1.1", 41146)
    mine = sorted((s for s in subs if s.token == v4.token), key=lambda s: s.rem_id)
    assert [(s.remote, s.rem_id, s.bytes_received) for s in mine] == [
        ("10.83.1.1", 0, 960000), ("10.83.2.1", 1, 40000)]


def test_backup_retrans_rates_and_bound_ipv6():
    conns, subs = diag.parse_ss(SYNTHETIC)
    assert conns == []
    assert len(subs) == 1   # the listener and the plain TCP socket are not subflows
    s = subs[0]
    assert (s.local, s.dev, s.lport, s.remote, s.rport) == (
        "fd83:2::1", "eth1", 40000, "fd83:1::2", 443)
    assert (s.token, s.loc_id, s.remote_token, s.rem_id) == (0x12345678, 2, 0xABCD0001, 0)
    assert s.backup and not s.peer_backup
    assert (s.retrans, s.rtt_ms, s.bytes_received, s.delivery_rate) == (4, 12.5, 5, 1500000)


def test_single_protocol_output_needs_the_netid_given():
    text = "\n".join(line.split(" ", 1)[1] if line.startswith("mptcp ") else line
                     for line in CLIENT.splitlines() if not line.startswith("tcp "))
    only_mptcp = "\n".join(ln for ln in text.splitlines()
                           if not ln.startswith("\t") or "remote_key" in ln)
    conns, subs = diag.parse_ss(only_mptcp, netid="mptcp")
    assert {c.token for c in conns} == {0x4624E16B, 0x330883CA}
    assert subs == []


def test_endpoint_split():
    assert diag.split_endpoint("10.0.0.1%eth0:443") == ("10.0.0.1", "eth0", 443)
    assert diag.split_endpoint("[fe80::1]%eth0:80") == ("fe80::1", "eth0", 80)
    assert diag.split_endpoint("0.0.0.0:*") == ("0.0.0.0", None, 0)
