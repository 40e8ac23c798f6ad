"""The configuration file: every mistake named by file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cowfs import values
from cowfs.config import TenantOwner, load
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
log_level = "Debug"
log_file = "/var/log/cowfs.log"

[tenants.acme]
uid = 0
gid = 0
mode = "0750"
"""))
    assert config.get("store") == "s3://bucket/prefix"
    assert config.get("cache_size") == 2 * 1024**3
    assert config.get("write_back_delay") == 0.5
    assert (config.get("log_level"), config.get("log_file")) == ("DEBUG", Path("/var/log/cowfs.log"))
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
        ("[tenants.acme]\nuid = 0\ngid = 0\nmode = 1.5", "'mode'"),
        ("[tenants.acme]\nuid = 0", "'gid'"),
        ("cache_size = 1.5", "'cache_size'"),
        ("metadata_ttl = nan", "'metadata_ttl'"),
        ("store_timeout = 0", "'store_timeout'"),
        ("write_back_delay = inf", "'write_back_delay'"),
        ('tenant = "../x"', "'tenant'"),
        ('endpoint_url = "notaurl"', "'endpoint_url'"),
        ('region = "us east"', "'region'"),
        ('log_level = "loud"', "'log_level'"),
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
    assert values.byte_size("10G") == 10 * 1024**3
    assert values.byte_size("512M") == 512 * 1024**2
    assert values.byte_size("1.5K") == 1536
    assert values.byte_size(4096) == 4096
    for bad in ("ten", "1.5", "0.3K", -1, 1.5, True, "-5", "1e3"):
        with pytest.raises(ValueError):
            values.byte_size(bad)


def test_numbers_are_finite_and_in_range():
    assert values.non_negative_finite("0") == 0.0 and values.non_negative_finite(2) == 2.0
    assert values.positive_finite("0.5") == 0.5
    assert values.days("90") == 90.0 and values.days(1) == 1.0
    for parse, bad in ((values.non_negative_finite, "-1"), (values.non_negative_finite, "nan"),
                       (values.positive_finite, "0"), (values.positive_finite, float("inf")),
                       (values.days, "0.99"), (values.days, "-inf"), (values.days, True), (values.days, "x")):
        with pytest.raises(ValueError):
            parse(bad)
    assert values.page_size("100") == 100 and values.positive_int(7) == 7
    for parse, bad in ((values.page_size, "101"), (values.page_size, "0"), (values.positive_int, "1.0"),
                       (values.positive_int, False)):
        with pytest.raises(ValueError):
            parse(bad)


def test_names_and_urls():
    assert values.tenant_name("acme-1.a_b") == "acme-1.a_b"
    assert values.workspace_ref("acme/ws") == ("acme", "ws")
    assert values.archive_source("acme/ws/sessions/s1") == ("acme", "ws", "s1")
    assert values.archive_source("acme/ws") == ("acme", "ws", None)
    for bad in ("..", ".cowfs", "a/b", "", "-x", "a" * 129, 3):
        with pytest.raises(ValueError):
            values.tenant_name(bad)
    for bad in ("acme", "acme/ws/x", "../ws", "acme/.."):
        with pytest.raises(ValueError):
            values.workspace_ref(bad)
    assert values.endpoint_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    for bad in ("notaurl", "ftp://host", "http://", "http://host:99999", "http://host:port", "http://host:0"):
        with pytest.raises(ValueError):
            values.endpoint_url(bad)
    assert values.file_mode("0750") == 0o750 and values.file_mode(0o750) == 0o750
    for bad in ("rwx", "0800", 1.5, 0o17777, True):
        with pytest.raises(ValueError):
            values.file_mode(bad)


def test_every_mount_option_goes_the_same_way_through_the_command_line_the_config_and_the_daemon(tmp_path):
    """One table of options: a mount's settings written as the daemon's command line
    parse back to the same settings, and every option is a config key and a mount -o name."""
    from cowfs import options
    from cowfs.cli import HELPER_FLAGS, HELPER_OPTIONS, build_parser
    from cowfs.config import KEYS
    from cowfs.daemon import MountOptions

    settings = MountOptions(
        mountpoint=tmp_path / "mnt", store_url="s3://b/p", tenant="acme", cache_dir=tmp_path / "cache",
        cache_size=123456, write_back_delay=0.5, metadata_ttl=2.0, store_timeout=7.0,
        endpoint_url="http://127.0.0.1:9000", region="eu-west-1", path_style=True, create_bucket=True,
        debug=True, log_level="DEBUG", log_file=tmp_path / "log", fuse_options=["allow_other"],
    )
    args = build_parser().parse_args(settings.argv())
    for option in options.MOUNT_ALL:
        assert getattr(args, option.name) == getattr(settings, option.name), option.name
        assert option.name in KEYS
        assert option.name in (HELPER_FLAGS if option.flag else HELPER_OPTIONS)
    assert (args.store_or_mountpoint, args.mountpoint, args.foreground) == ("s3://b/p", str(tmp_path / "mnt"), True)
