"""mptcpctl.toml: defaults, every documented key accepted, unknown keys and wrong types
rejected with the file and line named."""

import pytest

from controller import config
from controller.errors import BadInput


def write(tmp_path, text):
    p = tmp_path / "mptcpctl.toml"
    p.write_text(text)
    return p


def test_missing_default_file_gives_the_defaults(tmp_path):
    cfg = config.load(tmp_path / "absent.toml")
    assert cfg == config.DaemonConfig()


def test_a_named_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        config.load(tmp_path / "absent.toml", required=True)


def test_every_key_in_the_table_is_a_field_with_that_default():
    cfg = config.DaemonConfig()
    for key, (default, _typ, doc) in config.KEYS.items():
        value = getattr(cfg, key)
        assert (list(value) if isinstance(value, tuple) else value) == default, key
        assert doc


def test_keys_are_read(tmp_path):
    p = write(tmp_path, 'policy = "backup"\nbackup_ifaces = ["lte0"]\nmax_subflows = 4\n')
    cfg = config.load(p)
    assert (cfg.policy, cfg.backup_ifaces, cfg.max_subflows) == ("backup", ("lte0",), 4)


def test_unknown_key_names_the_key_and_line(tmp_path):
    p = write(tmp_path, 'pm = "userspace"\n\npolicyy = "fullmesh"\n')
    with pytest.raises(BadInput, match=r"mptcpctl.toml:3: unknown key 'policyy'"):
        config.load(p)


@pytest.mark.parametrize("text,match", [
    ('max_subflows = "8"', "max_subflows must be a int"),
    ("max_subflows = true", "max_subflows must be a int"),
    ("max_subflows = 9", "between 1 and 8"),
    ('policy = "roundrobin"', "unknown policy"),
    ('pm = "mptcpd"', "pm must be userspace or kernel"),
    ('policy = "backup"', "needs at least one backup interface"),
    ("ifaces = [1, 2]", "list of names"),
    ("this is not toml", "mptcpctl.toml"),
])
def test_bad_values_are_one_line_errors(tmp_path, text, match):
    with pytest.raises(BadInput, match=match) as e:
        config.load(write(tmp_path, text + "\n"))
    assert "\n" not in str(e.value)


def test_readme_documents_every_key_with_its_default():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for key, (default, _t, _doc) in config.KEYS.items():
        shown = {str: f'"{default}"', bool: str(default).lower(), list: "[]"}.get(
            type(default), str(default))
        assert f"| `{key}` | `{shown}` |" in readme, key
