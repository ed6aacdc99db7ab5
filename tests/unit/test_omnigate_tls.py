"""The development CA and server certificate, and tile path resolution."""

from __future__ import annotations

import asyncio
import multiprocessing
import ssl
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509

from ron.proto.envelope import RonError
from ron.sdk.oap import client_context
from ron.services.omnigate.apps import resolve_tile
from ron.services.omnigate.tls import ensure_dev_certs, server_context


def test_first_start_generates_ca_and_server_pair(tmp_path: Path) -> None:
    files = ensure_dev_certs(tmp_path)
    tls = tmp_path / "tls"
    assert files.cert == tls / "server.crt" and files.ca == tls / "ca.crt"
    made = sorted(p.name for p in tls.iterdir())
    assert made == [".generate.lock", "ca.crt", "ca.key", "server.crt", "server.key"]
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tls / key).stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(files.ca.read_bytes()))  # type: ignore[arg-type]


def test_existing_files_are_reused(tmp_path: Path) -> None:
    ensure_dev_certs(tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()}
    ensure_dev_certs(tmp_path)
    assert {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()} == before


def test_server_key_without_its_certificate_is_regenerated(tmp_path: Path) -> None:
    ensure_dev_certs(tmp_path)
    tls = tmp_path / "tls"
    ca = (tls / "ca.crt").read_bytes()
    other = tmp_path / "other"
    ensure_dev_certs(other)
    # A crash between writing a new key and its certificate leaves a mismatched pair.
    (tls / "server.key").write_bytes((other / "tls" / "server.key").read_bytes())
    ensure_dev_certs(tmp_path)
    assert (tls / "ca.crt").read_bytes() == ca  # clients keep trusting the same CA
    server_context(ensure_dev_certs(tmp_path))  # loads: the pair matches again


def _first_start(data_dir: str, start: float) -> tuple[bytes, bytes]:
    """One worker's start: the files, then the server certificate it would serve."""
    delay = start - time.monotonic()
    if delay > 0:
        time.sleep(delay)  # a start line shared by the processes, not synchronisation
    files = ensure_dev_certs(Path(data_dir))
    return files.cert.read_bytes(), files.ca.read_bytes()


def test_workers_starting_together_serve_one_ca(tmp_path: Path) -> None:
    """Several OAP workers make the development files at once: every one must end up
    serving a certificate signed by the CA that clients find on disk."""
    ctx = multiprocessing.get_context("fork")
    start = time.monotonic() + 0.3
    with ctx.Pool(4) as pool:
        seen = pool.starmap(_first_start, [(str(tmp_path), start)] * 4)
    assert len({cert for cert, _ in seen}) == 1
    assert len({ca for _, ca in seen}) == 1
    ca = x509.load_pem_x509_certificate((tmp_path / "tls" / "ca.crt").read_bytes())
    served = x509.load_pem_x509_certificate(seen[0][0])
    served.verify_directly_issued_by(ca)  # type: ignore[arg-type]


def test_a_new_ca_gets_a_new_server_certificate(tmp_path: Path) -> None:
    ensure_dev_certs(tmp_path)
    tls = tmp_path / "tls"
    (tls / "ca.crt").unlink()
    files = ensure_dev_certs(tmp_path)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(files.ca.read_bytes()))  # type: ignore[arg-type]


async def test_client_trusting_the_ca_completes_a_tls13_ron1_handshake(tmp_path: Path) -> None:
    files = ensure_dev_certs(tmp_path)
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_context(files)
    )
    port = server.sockets[0].getsockname()[1]
    try:
        for host in ("127.0.0.1", "localhost"):
            _, writer = await asyncio.open_connection(
                host, port, ssl=client_context(files.ca), server_hostname=host
            )
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.version() == "TLSv1.3"
            assert ssl_object.selected_alpn_protocol() == "ron/1"
            writer.close()
    finally:
        server.close()


async def test_client_without_the_ca_refuses_the_server(tmp_path: Path) -> None:
    files = ensure_dev_certs(tmp_path)
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_context(files)
    )
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(ensure_dev_certs(tmp_path / "x").ca)
            )
    finally:
        server.close()


@pytest.mark.parametrize(
    "path",
    ["/../x", "/a/../../x", "a//b", "/a/./b", "", "/", "a\\b", "a\0b", "/tiles/../tiles/x"],
)
def test_tile_paths_that_could_escape_are_400(tmp_path: Path, path: str) -> None:
    with pytest.raises(RonError) as err:
        resolve_tile(tmp_path, path)
    assert err.value.status == 400


def test_tile_symlink_out_of_the_root_is_400(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("x")
    (root / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(RonError) as err:
        resolve_tile(root, "/link")
    assert err.value.status == 400


def test_tile_path_resolves_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c.png").write_bytes(b"png")
    assert resolve_tile(tmp_path, "/a/b/c.png") == (tmp_path / "a" / "b" / "c.png").resolve()
    assert resolve_tile(tmp_path, "a/b/c.png") == (tmp_path / "a" / "b" / "c.png").resolve()
    with pytest.raises(RonError) as err:
        resolve_tile(tmp_path, "/a/b")
    assert err.value.status == 404
