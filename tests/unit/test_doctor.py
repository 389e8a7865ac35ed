"""`mptcpctl doctor` rules on hand-made facts (no root): each misconfiguration is named with
its fix, a healthy host passes, and the CLI's --json and exit code follow the verdicts."""

import json

import pytest
from click.testing import CliRunner

from cli.commands import doctor as doctor_cli
from controller import doctor
from controller.doctor import EndpointInfo, Facts, Iface, Route, Rule

WIFI = Iface("wifi", 2, ("10.1.0.2",))
LTE = Iface("lte", 3, ("10.2.0.2",))
DEFAULT_WIFI = Route(4, 254, "wifi", "10.1.0.1")
LTE_TABLE = Route(4, 100, "lte", "10.2.0.1")
SUBFLOW_LTE = EndpointInfo(1, "10.2.0.2", frozenset({"subflow"}), "lte")


def healthy(**changes) -> Facts:
    """A multihomed client configured as it should be; tests change one thing."""
    base = dict(ifaces=(WIFI, LTE), limits=(2, 2), endpoints=(SUBFLOW_LTE,),
                routes=(DEFAULT_WIFI, LTE_TABLE), rules=(Rule(4, 100, "10.2.0.2/32"),))
    base.update(changes)
    return Facts(**base)


def by_id(facts: Facts) -> dict:
    return {c.id: c for c in doctor.evaluate(facts)}


def test_healthy_multihomed_host_has_no_warning():
    checks = doctor.evaluate(healthy())
    assert {c.status for c in checks} <= {"ok", "info"}, [c for c in checks if c.status]
    assert not doctor.blocks_mptcp(checks)


def test_every_rule_answers_once_with_a_known_status():
    checks = doctor.evaluate(Facts())
    assert len(checks) == len(doctor.RULES) == len({c.id for c in checks})
    assert all(c.status in doctor.STATUSES and c.title and c.detail for c in checks)


@pytest.mark.parametrize("release, status", [("6.18.44-fc-v657", "ok"), ("5.19.0", "ok"),
                                             ("5.15.0-91-generic", "warn"), ("4.19.0", "fail"),
                                             ("weird", "info")])
def test_kernel_version_is_judged(release, status):
    assert by_id(Facts(kernel_release=release))["kernel"].status == status


def test_mptcp_disabled_blocks_and_says_the_sysctl():
    c = by_id(Facts(mptcp_enabled="0", netns="cli"))["mptcp-enabled"]
    assert c.status == "fail"
    assert c.fix == "ip netns exec cli sysctl -w net.mptcp.enabled=1"


def test_kernel_without_mptcp_blocks():
    assert by_id(Facts(mptcp_enabled=None))["mptcp-enabled"].status == "fail"


def test_userspace_pm_without_mptcpctl_warns_nobody_manages_paths():
    c = by_id(Facts(path_manager="userspace", daemon_pid=None))["path-manager"]
    assert c.status == "warn" and "nobody" in c.detail
    assert "mptcpctl up" in c.fix and "net.mptcp.path_manager=kernel" in c.fix


def test_userspace_pm_on_old_kernel_suggests_pm_type_zero():
    c = by_id(Facts(path_manager="userspace", pm_sysctl="net.mptcp.pm_type"))["path-manager"]
    assert "net.mptcp.pm_type=0" in c.fix


def test_userspace_pm_with_mptcpctl_running_is_fine():
    facts = Facts(path_manager="userspace", daemon_pid=42)
    assert by_id(facts)["path-manager"].status == "ok"
    assert by_id(facts)["daemon"].status == "ok"


def test_zero_subflows_with_two_interfaces_blocks_aggregation():
    c = by_id(healthy(limits=(0, 2), netns="cli"))["limits"]
    assert c.status == "fail" and "0" in c.detail
    assert c.fix == "ip -n cli mptcp limits set subflows 1 add_addr_accepted 2"


def test_too_few_subflows_for_three_interfaces_warns():
    third = Iface("eth", 4, ("10.3.0.2",))
    c = by_id(healthy(ifaces=(WIFI, LTE, third), limits=(1, 2)))["limits"]
    assert c.status == "warn" and "need 2" in c.detail
    assert "subflows 2" in c.fix


def test_no_accepted_add_addr_warns():
    c = by_id(healthy(limits=(2, 0)))["limits"]
    assert c.status == "warn" and "ADD_ADDR" in c.detail and "add_addr_accepted 1" in c.fix


def test_limits_do_not_matter_to_the_userspace_pm():
    facts = healthy(limits=(0, 0), path_manager="userspace", daemon_pid=1)
    assert by_id(facts)["limits"].status == "info"


def test_unreadable_limits_warn_with_the_reason():
    c = by_id(Facts(limits=None, limits_error="no mptcp_pm family"))["limits"]
    assert c.status == "warn" and "no mptcp_pm family" in c.detail


def test_multihomed_kernel_pm_without_subflow_endpoint_warns():
    c = by_id(healthy(endpoints=()))["endpoints"]
    assert c.status == "warn"
    assert c.fix == "ip mptcp endpoint add 10.2.0.2 dev lte subflow"


def test_endpoint_for_an_address_we_do_not_have_warns():
    stale = EndpointInfo(9, "10.9.9.9", frozenset({"signal"}))
    c = by_id(healthy(endpoints=(SUBFLOW_LTE, stale)))["endpoints"]
    assert c.status == "warn" and "10.9.9.9" in c.detail and "delete id 9" in c.fix


def test_subflow_endpoint_without_dev_warns_with_the_device_to_use():
    loose = EndpointInfo(1, "10.2.0.2", frozenset({"subflow"}), None)
    c = by_id(healthy(endpoints=(loose,)))["endpoint-dev"]
    assert c.status == "warn" and "wrong interface" in c.detail
    assert "mptcp endpoint add 10.2.0.2 dev lte subflow" in c.fix


def test_signal_endpoint_without_dev_is_fine():
    signal = EndpointInfo(1, "10.2.0.2", frozenset({"signal"}), None)
    assert by_id(healthy(endpoints=(SUBFLOW_LTE, signal)))["endpoint-dev"].status == "ok"


def test_signal_and_fullmesh_together_block():
    bad = EndpointInfo(3, "10.2.0.2", frozenset({"signal", "fullmesh"}), "lte")
    c = by_id(healthy(endpoints=(SUBFLOW_LTE, bad)))["endpoint-flags"]
    assert c.status == "fail"
    assert c.fix.endswith("mptcp endpoint add 10.2.0.2 dev lte signal")


def test_strict_rp_filter_on_one_interface_of_a_multihomed_host_warns():
    strict_lte = Iface("lte", 3, ("10.2.0.2",), rp_filter=1)
    c = by_id(healthy(ifaces=(WIFI, strict_lte)))["rp-filter"]
    assert c.status == "warn" and "lte" in c.detail and "wifi" not in c.detail
    assert c.fix.startswith("sysctl -w net.ipv4.conf.lte.rp_filter=2")


def test_strict_all_makes_every_interface_strict():
    c = by_id(healthy(rp_filter_all=1))["rp-filter"]
    assert c.status == "warn" and "wifi, lte" in c.detail
    assert "net.ipv4.conf.all.rp_filter=2" in c.fix


def test_loose_interface_wins_over_strict_all():
    loose = (Iface("wifi", 2, ("10.1.0.2",), 2), Iface("lte", 3, ("10.2.0.2",), 2))
    assert by_id(healthy(rp_filter_all=1, ifaces=loose))["rp-filter"].status == "ok"


def test_strict_rp_filter_on_a_single_homed_host_is_harmless():
    facts = Facts(ifaces=(Iface("eth0", 2, ("10.1.0.2",), 1),))
    assert by_id(facts)["rp-filter"].status == "ok"


def test_missing_source_rule_warns_with_rule_and_route():
    c = by_id(healthy(rules=(), routes=(DEFAULT_WIFI,), netns="cli"))["source-routing"]
    assert c.status == "warn" and "10.2.0.2" in c.detail
    assert "ip -n cli rule add from 10.2.0.2 table 100" in c.fix
    assert "ip -n cli route add default via GATEWAY dev lte table 100" in c.fix


def test_missing_source_rule_reuses_the_gateway_and_table_it_knows():
    c = by_id(healthy(rules=()))["source-routing"]
    assert c.fix == "ip rule add from 10.2.0.2 table 100"


def test_source_rule_to_an_empty_table_warns_for_the_route():
    c = by_id(healthy(routes=(DEFAULT_WIFI, Route(4, 254, "lte", "10.2.0.1", 200))))
    src = c["source-routing"]
    assert src.status == "warn" and "table 100 has no default route" in src.detail
    assert src.fix == "ip route add default via 10.2.0.1 dev lte table 100"


def test_suggested_table_avoids_tables_in_use():
    used = (DEFAULT_WIFI, Route(4, 100, "wifi", "10.1.0.1"))
    c = by_id(healthy(rules=(), routes=used))["source-routing"]
    assert "table 101" in c.fix


def test_single_interface_needs_no_source_rules():
    assert by_id(Facts(ifaces=(WIFI,), routes=(DEFAULT_WIFI,)))["source-routing"].status == "ok"


@pytest.mark.parametrize("field, value, check_id", [
    ("btf", False, "btf"), ("cgroup2", None, "cgroup2"), ("bpffs", False, "bpffs"),
    ("kernel_headers", False, "kernel-headers"), ("bcc_error", "No module named 'bcc'", "bcc"),
])
def test_missing_bpf_pieces_warn_with_a_fix(field, value, check_id):
    c = by_id(Facts(**{field: value}))[check_id]
    assert c.status == "warn" and c.fix


def test_headers_fix_is_make_deps():
    assert by_id(Facts(kernel_headers=False))["kernel-headers"].fix == "make deps"


def test_report_is_ok_only_without_failures():
    assert doctor.report(doctor.evaluate(healthy()))["ok"] is True
    bad = doctor.report(doctor.evaluate(healthy(limits=(0, 2))))
    assert bad["ok"] is False
    assert set(bad["checks"][0]) == {"id", "status", "title", "detail", "fix"}


def test_cli_json_and_exit_code(monkeypatch):
    monkeypatch.setattr(doctor, "gather", lambda netns=None: healthy(limits=(0, 2)))
    result = CliRunner().invoke(doctor_cli.doctor, ["--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["ok"] is False and any(c["id"] == "limits" for c in data["checks"])


def test_cli_table_fits_80_columns_and_exits_0_when_healthy(monkeypatch):
    monkeypatch.setattr(doctor, "gather", lambda netns=None: healthy(rp_filter_all=1))
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(doctor_cli.doctor, [])
    assert result.exit_code == 0, result.output
    assert "reverse-path filter" in result.output or "reverse-path" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_missing_namespace_is_bad_input():
    from controller.errors import BadInput
    with pytest.raises(BadInput):
        doctor.gather("no-such-ns-doctor-test")
