"""Config is built from defaults < file < RON_* env < flags, and validated whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from ron.kernel import Config
from ron.kernel.config import ConfigError, load_config, parse_hostport


def test_defaults_match_the_reference() -> None:
    c = load_config()
    assert c.admin == "127.0.0.1:9096"
    assert c.oap == "127.0.0.1:9443"
    assert c.kernel.bus_capacity == 4096
    assert c.supervisor.backoff_initial_s == 0.1
    assert c.supervisor.backoff_max_s == 30.0
    assert c.supervisor.max_restarts == 5
    assert c.supervisor.restart_window_s == 60.0


def test_precedence_is_file_then_env_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "ron.toml"
    f.write_text('log_level = "debug"\nadmin = "127.0.0.1:1"\n[supervisor]\nmax_restarts = 2\n')
    env = {"RON_ADMIN": "127.0.0.1:2", "RON_SUPERVISOR__MAX_RESTARTS": "3"}
    c = load_config(f, env, {"admin": "127.0.0.1:3"})
    assert c.log_level == "debug"  # file
    assert c.supervisor.max_restarts == 3  # env beats file
    assert c.admin == "127.0.0.1:3"  # flag beats env


def test_ron_config_env_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "ron.toml"
    f.write_text('data_dir = "/srv/ron"\n')
    assert load_config(env={"RON_CONFIG": str(f)}).data_dir == Path("/srv/ron")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bogus = 1\n", "unknown key bogus"),
        ("[supervisor]\nmax_restart = 1\n", "unknown key supervisor.max_restart"),
        ('log_level = "loud"\n', "log_level"),
        ('admin = "nohost"\n', "HOST:PORT"),
        ('admin = "127.0.0.1:70000"\n', "port"),
        ("[kernel]\nbus_capacity = 0\n", "bus_capacity"),
        ('[supervisor]\nmax_restarts = "many"\n', "max_restarts"),
        ("admin = = 1\n", "ron.toml"),
    ],
)
def test_invalid_files_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "ron.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(f)


def test_unrelated_ron_env_vars_are_ignored() -> None:
    c = load_config(env={"RON_NODE_URL": "http://x", "RON_CAP": "token"})
    assert c == load_config()


def test_snapshot_round_trips_through_a_plain_dict() -> None:
    c = load_config(flags={"data_dir": "/tmp/x", "single_process": True})
    assert Config.from_dict(c.to_dict()) == c


def test_env_booleans_and_lists_are_coerced() -> None:
    c = load_config(env={"RON_SINGLE_PROCESS": "yes", "RON_SERVICES": "index, storage"})
    assert c.single_process is True
    assert c.services == ("index", "storage")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:9096", ("::1", 9096)), ("h:1", ("h", 1))],
)
def test_hostport_parsing(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["", ":80", "::1:80", "[zz]:1", "h:-1", "h:x"])
def test_bad_hostports_are_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hostport(text)
