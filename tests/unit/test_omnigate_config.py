"""The [omnigate] config section: REFERENCE §9 defaults, environment overrides, checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from ron.kernel.config import ConfigError, load_config


def test_defaults_are_the_reference_ones() -> None:
    o = load_config().omnigate
    assert o.tls is True
    assert (o.cert_file, o.key_file, o.ca_file, o.tiles_root) == (None, None, None, None)
    assert o.max_frame == 1_048_576 and o.max_inflight == 256 and o.max_streams == 128
    assert (o.storage_rps, o.mailbox_rps, o.burst_factor) == (50.0, 100.0, 2.0)
    assert (o.handshake_timeout_s, o.idle_timeout_s, o.write_timeout_s) == (2.0, 15.0, 10.0)
    assert (o.max_stream_frames, o.max_stream_bytes) == (4096, 4 * 1024 * 1024)


def test_environment_overrides() -> None:
    o = load_config(
        env={
            "RON_OMNIGATE__IDLE_TIMEOUT_S": "0.5",
            "RON_OMNIGATE__TLS": "false",
            "RON_OMNIGATE__STORAGE_RPS": "7.5",
            "RON_OMNIGATE__TILES_ROOT": "/srv/tiles",
        }
    ).omnigate
    assert o.idle_timeout_s == 0.5 and o.tls is False and o.storage_rps == 7.5
    assert o.tiles_root == Path("/srv/tiles")


def test_file_section(tmp_path: Path) -> None:
    path = tmp_path / "ron.toml"
    path.write_text('[omnigate]\nmax_inflight = 4\ncert_file = "/c.pem"\nkey_file = "/k.pem"\n')
    o = load_config(path).omnigate
    assert o.max_inflight == 4 and o.cert_file == Path("/c.pem")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("IDLE_TIMEOUT_S", "0"),
        ("MAX_INFLIGHT", "0"),
        ("STORAGE_RPS", "-1"),
        ("BURST_FACTOR", "0.5"),
        ("MAX_FRAME", "32"),
        ("HANDSHAKE_TIMEOUT_S", "nope"),
        ("CERT_FILE", "/only-the-cert.pem"),
    ],
)
def test_invalid_values_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError):
        load_config(env={f"RON_OMNIGATE__{key}": value})


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ron.toml"
    path.write_text("[omnigate]\nidle_timeout = 3\n")
    with pytest.raises(ConfigError, match=r"omnigate\.idle_timeout"):
        load_config(path)


def test_workers_are_one_by_default_and_each_is_a_service() -> None:
    from ron.services.registry import specs_for, worker_slot

    assert load_config().omnigate.workers == 1
    with pytest.raises(ConfigError):
        load_config(env={"RON_OMNIGATE__WORKERS": "0"})
    config = load_config(env={"RON_OMNIGATE__WORKERS": "3"})
    names = [s.name for s in specs_for(config)]
    assert [n for n in names if n.startswith("omnigate")] == [
        "omnigate",
        "omnigate-2",
        "omnigate-3",
    ]
    assert [worker_slot(n) for n in ("omnigate", "omnigate-2", "omnigate-3")] == [0, 1, 2]
    assert {s.listeners for s in specs_for(config) if s.name.startswith("omnigate")} == {("oap",)}
