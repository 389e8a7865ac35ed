"""A non-editable install works: the wheel carries the BPF C sources (as data files), the systemd
unit and example config (package data) and the console script; installed into a fresh venv,
controller._paths finds the sources under the venv's share/mptcpctl/bpf."""

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What a copy of the repository for building needs (not the venv, caches, git or results).
IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                ".pytest_cache", ".ruff_cache", "results", "vagrant")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tree (the build leaves no build/ or egg-info here),
    with the venv's setuptools: no network needed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=IGNORE)
    out = tmp / "dist"
    cp = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                         "--no-build-isolation", "--disable-pip-version-check", "-w", str(out),
                         str(src)], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    (whl,) = out.glob("mptcpctl-*.whl")
    return whl


def names(whl: Path) -> set[str]:
    with zipfile.ZipFile(whl) as z:
        return set(z.namelist())


def test_the_wheel_carries_every_bpf_source(wheel):
    data = next(n.split("/")[0] for n in names(wheel) if n.endswith(".data/data/share/mptcpctl"
                                                                  "/bpf/mptcp_datapath.c"))
    shipped = {n.split("/share/mptcpctl/bpf/", 1)[1] for n in names(wheel)
               if n.startswith(f"{data}/data/share/mptcpctl/bpf/")}
    sources = {str(p.relative_to(REPO / "bpf")) for p in (REPO / "bpf").rglob("*")
               if p.suffix in (".c", ".h")}
    assert sources <= shipped


def test_the_wheel_carries_the_unit_and_the_example_config(wheel):
    assert {"controller/data/mptcpctl.service",
            "controller/data/mptcpctl.toml.example"} <= names(wheel)


def test_the_wheel_declares_the_mptcpctl_command(wheel):
    with zipfile.ZipFile(wheel) as z:
        ep = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
        text = z.read(ep).decode()
    assert "[console_scripts]" in text
    assert "mptcpctl = cli.main:main" in text


def test_an_installed_copy_finds_its_bpf_sources(wheel, tmp_path):
    env = tmp_path / "venv"
    # only the import of controller._paths runs there: no dependencies needed
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env)
    py = env / "bin" / "python"
    # --ignore-installed: without it pip uninstalls the developer's editable copy first.
    cp = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                         "--ignore-installed",
                         "--disable-pip-version-check", "--prefix", str(env), str(wheel)],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    assert (env / "bin" / "mptcpctl").exists()
    # run from elsewhere, so the source tree is not on sys.path
    cp = subprocess.run([str(py), "-c", "from controller import _paths; "
                         "print(_paths.bpf_dir()); print(_paths.data_file('mptcpctl.service'))"],
                        capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert cp.returncode == 0, cp.stderr
    bpf, unit = cp.stdout.split()
    assert Path(bpf) == env / "share" / "mptcpctl" / "bpf"
    assert (Path(bpf) / "mptcp_datapath.c").is_file()
    assert (Path(bpf) / "include" / "abi.h").is_file()
    assert Path(unit).is_file() and str(env) in unit


def test_the_example_config_lists_every_key_with_its_default():
    import tomllib

    from controller import _paths, config

    text = _paths.data_file("mptcpctl.toml.example").read_text()
    # every setting is commented out: uncommented, the lines are TOML with the defaults
    settings = tomllib.loads("\n".join(line[1:] for line in text.splitlines()
                                       if line.startswith("#") and " = " in line))
    for key, (default, _typ, _doc) in config.KEYS.items():
        assert key in settings, f"{key} is missing from mptcpctl.toml.example"
        assert settings[key] == default, key


def test_the_unit_runs_the_daemon_in_the_foreground_and_stops_it_with_down():
    from controller import _paths

    unit = _paths.data_file("mptcpctl.service").read_text().splitlines()
    assert "Type=simple" in unit
    assert "Restart=on-failure" in unit
    assert "ExecStart=/usr/local/bin/mptcpctl up --foreground" in unit
    assert "ExecStop=/usr/local/bin/mptcpctl down" in unit
