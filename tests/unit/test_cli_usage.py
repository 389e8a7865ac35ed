"""CLI usage errors: one line on stderr, the documented exit code, never a traceback."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_unknown_verb_is_a_usage_error():
    r = run("frobnicate")
    assert r.exit_code == 2
    assert "No such command" in r.output


def test_attach_without_an_interface_is_a_usage_error():
    r = run("attach")
    assert r.exit_code == 2
    assert "--iface" in r.output


def test_version_is_printed():
    r = run("--version")
    assert r.exit_code == 0
    assert "mptcpctl" in r.output


def test_help_lists_every_verb():
    r = run("--help")
    for verb in ("attach", "detach", "decode", "lab", "top"):
        assert verb in r.output


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
@pytest.mark.parametrize("verb", [["attach", "--iface", "lo"], ["detach"], ["top"]])
def test_non_root_gets_one_line_and_exit_1(verb):
    code = "import sys; from cli.main import main; sys.argv=['mptcpctl', *sys.argv[1:]]; main()"
    p = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", code, *verb],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))),
    )
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs root" in lines[0], p.stderr
