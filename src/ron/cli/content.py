"""``ron put``, ``get``, ``pack``, ``resolve``, ``scrub``: content from the command line.

stdout carries only the result (an address, the bytes, a manifest) so commands compose
in shell pipelines; progress and errors go to stderr.
"""

from __future__ import annotations

import mimetypes
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import blake3
import httpx
import typer

from ron.cli.main import DataDir, app, env_config, fail

NodeOpt = Annotated[
    str | None,
    typer.Option("--node", help="Gateway URL [env RON_NODE_URL; default: the local node]"),
]
CHUNK = 256 * 1024
PROGRESS_OVER = 8 * 1024 * 1024


def node_url(node: str | None, data_dir: Path | None = None) -> str:
    """--node, else RON_NODE_URL, else the local node's gateway, else the default port."""
    from ron.localnode import read_node_file

    if node:
        return node.rstrip("/")
    if os.environ.get("RON_NODE_URL"):
        return os.environ["RON_NODE_URL"].rstrip("/")
    config, _ = env_config(data_dir)
    info = read_node_file(config.data_dir)
    if info and "http" in info.get("urls", {}):
        return str(info["urls"]["http"])
    return f"http://{config.http}"


def node_auth(url: str, data_dir: Path | None = None) -> dict[str, str]:
    """The Authorization header for ``url``: ``RON_CAP``, else the local node's owner
    token when ``url`` is that node's own address (never sent to another node)."""
    from ron.localnode import owner_token_for

    token = os.environ.get("RON_CAP")
    if not token:
        config, _ = env_config(data_dir)
        token = owner_token_for(url, config.data_dir)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _envelope_message(reply: httpx.Response) -> str:
    try:
        body = reply.json()
        return f"{body['code']}: {body['message']} (corr_id {body['corr_id']})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {reply.status_code}"


def _file_chunks(path: Path, progress: Any) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            if progress is not None:
                progress[0].update(progress[1], advance=len(chunk))
            yield chunk


@app.command()
def put(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="File to publish")],
    tld: Annotated[str | None, typer.Option("--tld", help="Kind suffix (e.g. txt, png)")] = None,
    license: Annotated[str | None, typer.Option("--license", help="Licence of the content")] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="Parent address")] = None,
    mime: Annotated[str | None, typer.Option("--mime", help="Content-Type")] = None,
    node: NodeOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Publish FILE; prints its canonical address."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    url = node_url(node, data_dir)
    size = file.stat().st_size
    content_type = mime or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    params = {"filename": file.name}
    for key, value in (("tld", tld), ("license", license), ("parent", parent)):
        if value:
            params[key] = value
    progress = None
    bar = Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True)
    if size > PROGRESS_OVER and sys.stderr.isatty():
        bar.start()
        progress = (bar, bar.add_task("put", total=size))
    try:
        reply = httpx.post(
            f"{url}/put",
            params=params,
            content=_file_chunks(file, progress),
            headers={
                "Content-Type": content_type,
                "Content-Length": str(size),
                **node_auth(url, data_dir),
            },
            timeout=httpx.Timeout(30, read=600),
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}")
        raise
    finally:
        if progress is not None:
            bar.stop()
    if reply.status_code != 201:
        fail(_envelope_message(reply))
    typer.echo(reply.json()["address"])


@app.command()
def get(
    addr: Annotated[str, typer.Argument(help="Address (b3:<hex>[.tld])")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write to this file (default stdout)")
    ] = None,
    node: NodeOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Fetch ADDR and verify its BLAKE3 before keeping a byte of it."""
    from ron.proto.address import parse_address
    from ron.proto.envelope import RonError

    try:
        address = parse_address(addr)
    except RonError as exc:
        fail(exc.message, 2)
        raise
    url = node_url(node, data_dir)
    # Bytes land in a temporary file first and reach the output (file or stdout) only
    # after the whole object hashed to its address: nothing unverified is ever kept.
    where = output.parent if output is not None else None
    fd, tmp_name = tempfile.mkstemp(prefix=".ron-get-", dir=where)
    tmp = Path(tmp_name)
    hasher = blake3.blake3()
    try:
        with (
            os.fdopen(fd, "wb") as out,
            httpx.stream(
                "GET", f"{url}/o/{address.canonical}", timeout=httpx.Timeout(30, read=600)
            ) as reply,
        ):
            if reply.status_code != 200:
                reply.read()
                fail(_envelope_message(reply))
            for chunk in reply.iter_bytes(CHUNK):
                hasher.update(chunk)
                out.write(chunk)
        if hasher.hexdigest() != address.hex:
            fail(f"integrity error: received bytes hash to b3:{hasher.hexdigest()}, not {addr}")
        if output is not None:
            os.replace(tmp, output)
            return
        with tmp.open("rb") as f:
            while chunk := f.read(CHUNK):
                sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    except httpx.HTTPError as exc:
        fail(f"transfer failed: {exc}")
    finally:
        tmp.unlink(missing_ok=True)


@app.command()
def pack(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="File to pack")],
    tld: Annotated[str | None, typer.Option("--tld")] = None,
    license: Annotated[str | None, typer.Option("--license")] = None,
    mime: Annotated[str | None, typer.Option("--mime")] = None,
    data_dir: DataDir = None,
) -> None:
    """Write FILE as a bundle straight into a data dir (no node needed); prints its address."""
    from ron.proto.bundle import write_bundle_offline
    from ron.proto.envelope import RonError
    from ron.services.index.db import IndexDB, IndexRecord
    from ron.services.index.service import index_path
    from ron.services.storage.store import ObjectStore

    config, _ = env_config(data_dir)
    content_type = mime or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    try:
        manifest = write_bundle_offline(
            config.data_dir,
            file,
            tld=tld,
            mime=content_type,
            original_filename=file.name,
            license=license,
        )
    except RonError as exc:
        fail(exc.message, 2)
        raise
    store = ObjectStore(config.data_dir)
    db = IndexDB(index_path(config))
    try:
        db.put(
            IndexRecord(
                hex=manifest.hash_hex,
                tld=manifest.tld,
                bundle=store.relpath(store.bundle_dir(manifest.address)),
                bytes=manifest.bytes,
                mime=manifest.mime,
                created_utc=manifest.created_utc,
            )
        )
    finally:
        db.close()
    typer.echo(manifest.address.canonical)


@app.command()
def resolve(
    addr: Annotated[str, typer.Argument(help="Address (b3:<hex>[.tld])")],
    node: NodeOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Print the Manifest.toml the node holds for ADDR."""
    url = node_url(node, data_dir)
    reply = httpx.get(f"{url}/o/{addr}/Manifest.toml", timeout=30)
    if reply.status_code != 200:
        fail(_envelope_message(reply))
    typer.echo(reply.text, nl=False)


@app.command()
def scrub(data_dir: DataDir = None) -> None:
    """Re-verify every bundle in the data dir; quarantine and unindex corrupted ones."""
    from ron.services.index.db import IndexDB
    from ron.services.index.service import index_path
    from ron.services.storage.store import ObjectStore

    config, _ = env_config(data_dir)
    store = ObjectStore(config.data_dir)
    checked = 0
    corrupt: list[str] = []
    db = IndexDB(index_path(config)) if index_path(config).exists() else None
    try:
        for bundle in list(store.iter_bundles()):
            result = store.scrub_bundle(bundle)
            if result is None:
                continue
            checked += 1
            manifest, ok = result
            if ok:
                continue
            corrupt.append(manifest.address.canonical)
            if db is not None:
                db.delete(manifest.hash_hex)
    finally:
        if db is not None:
            db.close()
    for addr in corrupt:
        typer.echo(f"corrupt {addr} (quarantined)", err=True)
    typer.echo(f"checked {checked} bundles, {len(corrupt)} corrupt")
    if corrupt:
        raise typer.Exit(1)
