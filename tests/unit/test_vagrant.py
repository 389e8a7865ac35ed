"""The Vagrant lab is the netns lab's TOPOLOGY: the Vagrantfile validates (`vagrant validate`),
reads TOPOLOGY through `python3 -m controller.lab`, makes one VM per node and gives each the
addresses, shapers and routes TOPOLOGY names; the lb profile swaps the server for an LB."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gates import skip_or_fail

from controller.lab import TOPOLOGY

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
# Loads the Vagrantfile with Vagrant.configure stubbed out and prints what it derived.
RUBY_DUMP = """
module Vagrant; def self.configure(*); end; end
load ARGV[0]
puts JSON.generate({"nodes" => NODES.map { |n| n["role"] },
                    "scripts" => NODES.to_h { |n| [n["role"], node_script(TOPO, n, LINKS)] }})
"""
# A stand-in for TOPOLOGY["lb"] while controller/lab.py has none (same shape as the lab's).


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MPTCPCTL_VAGRANT")}
    e.update(PYTHON=sys.executable, **extra)
    return e


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        skip_or_fail(f"{tool} is not installed (Debian: apt-get install {tool})")
    return path


def derived(tmp_path, **extra) -> dict:
    ruby = need("ruby")
    cp = subprocess.run([ruby, "-rjson", "-e", RUBY_DUMP, str(VAGRANT_DIR / "Vagrantfile")],
                        capture_output=True, text=True, env=env(**extra), cwd=tmp_path,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def test_the_topology_the_vagrantfile_reads_is_the_netns_labs():
    # the exact command the Vagrantfile runs
    cp = subprocess.run([sys.executable, "-m", "controller.lab"], capture_output=True,
                        text=True, cwd=REPO, timeout=30, check=True)
    assert json.loads(cp.stdout) == json.loads(json.dumps(TOPOLOGY))
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    assert '"-m", "controller.lab"' in text


def test_the_vagrantfile_is_valid_ruby():
    cp = subprocess.run([need("ruby"), "-c", str(VAGRANT_DIR / "Vagrantfile")],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr


@pytest.mark.parametrize("profile", ["lab", "lb"])
def test_vagrant_validates_the_vagrantfile(tmp_path, profile):
    vagrant = need("vagrant")
    topo = tmp_path / "topology.json"
    topo.write_text(json.dumps(TOPOLOGY))
    extra = {"MPTCPCTL_VAGRANT_PROFILE": profile, "VAGRANT_CWD": str(VAGRANT_DIR),
             # keep .vagrant/ and Vagrant's home out of the repository and the user's home
             "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
             "VAGRANT_HOME": str(tmp_path / "home"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    if profile == "lb":
        extra["MPTCPCTL_TOPOLOGY_JSON"] = str(topo)
    cp = subprocess.run([vagrant, "validate", "--ignore-provider"], capture_output=True,
                        text=True, env=env(**extra), cwd=tmp_path, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "validated successfully" in cp.stdout


def test_one_vm_per_lab_node_with_the_labs_addresses_and_rates(tmp_path):
    got = derived(tmp_path)
    assert got["nodes"] == [n["role"] for n in TOPOLOGY["nodes"]]
    tbf = TOPOLOGY["tbf"]
    for link in TOPOLOGY["links"]:
        for end in (link["a"], link["b"]):
            script = got["scripts"][end["node"]]
            dev = end["if"].removesuffix("-{sfx}")
            assert f"ip addr replace {end['addr']} dev {dev}" in script
            assert f"ip -6 addr replace {end['addr6']} dev {dev} nodad" in script
            shaper = (f"tc qdisc replace dev {dev} root tbf rate {link['rate_mbit']}mbit "
                      f"burst {tbf['burst']} latency {tbf['latency']}")
            assert (shaper in script) is bool(link["shape"])
        if link["table"]:
            src = link["a"]["addr"].split("/")[0]
            assert (f"rule add from {src} table {link['table']}"
                    in got["scripts"][link["a"]["node"]])


def test_the_client_has_a_wifi_and_an_lte_nic():
    names = {lk["a"]["if"].removesuffix("-{sfx}") for lk in TOPOLOGY["links"]
             if lk["a"]["node"] == "client"}
    assert names == {"wifi", "lte"}


def test_the_lb_profile_puts_an_lb_and_three_backends_in_the_servers_place(tmp_path):
    topo = tmp_path / "topology.json"
    topo.write_text(json.dumps(TOPOLOGY))
    got = derived(tmp_path, MPTCPCTL_VAGRANT_PROFILE="lb", MPTCPCTL_TOPOLOGY_JSON=str(topo))
    assert got["nodes"] == ["client", "router", "lb", "backend1", "backend2", "backend3"]
    server = next(lk for lk in TOPOLOGY["links"] if lk["name"] == "server")["a"]
    assert f"ip addr replace {server['addr']} dev srv" in got["scripts"]["lb"]
    assert "net.ipv4.ip_forward=1" in got["scripts"]["lb"]
    assert "ip addr replace 10.81.12.2/24 dev be" in got["scripts"]["backend2"]
