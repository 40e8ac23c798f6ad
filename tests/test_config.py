"""The configuration file: every mistake named by file and key."""

from __future__ import annotations

import pytest

from cowfs.config import TenantOwner, load, parse_size
from cowfs.errors import UsageError


def write(tmp_path, text: str):
    path = tmp_path / "cowfs.toml"
    path.write_text(text)
    return path


def test_valid_file(tmp_path):
    config = load(write(tmp_path, """
store = "s3://bucket/prefix"
mountpoint = "/mnt/cowfs"
endpoint_url = "http://127.0.0.1:9000"
path_style = true
cache_size = "2G"
write_back_delay = 0.5
options = ["allow_other"]

[tenants.acme]
uid = 0
gid = 0
mode = "0750"
"""))
    assert config.get("store") == "s3://bucket/prefix"
    assert config.get("cache_size") == 2 * 1024**3
    assert config.get("write_back_delay") == 0.5
    assert config.tenants == {"acme": TenantOwner(0, 0, 0o750)}


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('stroe = "s3://x"', "'stroe'"),
        ("path_style = 1", "'path_style'"),
        ('cache_size = "lots"', "'cache_size'"),
        ("write_back_delay = -1", "'write_back_delay'"),
        ("[tenants.acme]\nuid = 4000000000\ngid = 0", "'uid'"),
        ("[tenants.acme]\nuid = 0\ngid = 0\nmode = \"rwx\"", "'mode'"),
        ("[tenants.acme]\nuid = 0\ngid = 0\nshell = 1", "'shell'"),
        ("[tenants.'bad name']\nuid = 0\ngid = 0", "bad name"),
        ("store = ", "not valid TOML"),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path, text, names):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as exc:
        load(path)
    message = str(exc.value)
    assert str(path) in message and names in message
    assert "\n" not in message


def test_sizes():
    assert parse_size("10G") == 10 * 1024**3
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size("ten")
