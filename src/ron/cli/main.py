"""The ``ron`` command.

Every subcommand that talks to a running node finds it through ``node.json`` in the
data dir (or ``--admin``), so ``make run`` followed by ``ron status`` needs no flags.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from ron.kernel.config import Config, ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="RustyOnions: a content-addressed node.",
    pretty_exceptions_enable=False,
)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Node data directory [env RON_DATA_DIR; default ./.ron]"),
]
AdminOpt = Annotated[str | None, typer.Option("--admin", help="Admin HOST:PORT of a running node")]


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"ron: {message}", err=True)
    raise typer.Exit(code)


def env_config(
    data_dir: Path | None = None, config_file: Path | None = None, **flags: Any
) -> tuple[Config, Any]:
    """The config snapshot for this invocation, plus the source to reload it from."""
    from ron.kernel.node import ConfigSource

    given = {k: v for k, v in flags.items() if v is not None}
    if data_dir is not None:
        given["data_dir"] = str(data_dir)
    source = ConfigSource(file=config_file, env=dict(os.environ), flags=given)
    try:
        return source.load(), source
    except ConfigError as exc:
        fail(f"invalid config: {exc}", 2)
        raise  # unreachable


def admin_url(data_dir: Path | None, admin: str | None) -> str:
    """The admin URL of the running node: --admin, else node.json in the data dir."""
    from ron.localnode import read_node_file

    if admin:
        return admin if admin.startswith("http") else f"http://{admin}"
    config, _ = env_config(data_dir)
    info = read_node_file(config.data_dir)
    if info is None:
        fail(f"no running node found in {config.data_dir} (start one with `ron up`)")
        raise AssertionError
    return str(info["urls"]["admin"])


@app.command()
def up(
    data_dir: DataDir = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML config file [env RON_CONFIG]")
    ] = None,
    admin: Annotated[
        str | None, typer.Option("--admin", help="Admin HOST:PORT [default 127.0.0.1:9096]")
    ] = None,
    http: Annotated[
        str | None, typer.Option("--http", help="Gateway HOST:PORT [default 127.0.0.1:8080]")
    ] = None,
    oap: Annotated[
        str | None, typer.Option("--oap", help="OAP/1 HOST:PORT [default 127.0.0.1:9443]")
    ] = None,
    single_process: Annotated[
        bool | None,
        typer.Option("--single-process/--multi-process", help="Run every service in one process"),
    ] = None,
    amnesia: Annotated[
        bool | None,
        typer.Option(
            "--amnesia",
            help="Keep everything in RAM (content, keys, logs); wiped on exit, nothing on disk",
        ),
    ] = None,
) -> None:
    """Start a node and run it until Ctrl-C or SIGTERM."""
    from ron.kernel.node import run_node
    from ron.logs import setup_logging
    from ron.services.registry import specs_for

    cfg, source = env_config(
        data_dir,
        config,
        admin=admin,
        http=http,
        oap=oap,
        single_process=single_process,
        amnesia=amnesia,
    )
    try:
        specs = specs_for(cfg)
    except ConfigError as exc:
        fail(f"invalid config: {exc}", 2)
    setup_logging(cfg.log_level)
    try:
        import uvloop

        code = uvloop.run(run_node(cfg, specs, source=source))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        import asyncio

        code = asyncio.run(run_node(cfg, specs, source=source))
    raise typer.Exit(code)


@app.command()
def status(
    data_dir: DataDir = None,
    admin: AdminOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print raw JSON")] = False,
) -> None:
    """Show the running node's services: health, pid, restarts, quarantine."""
    url = admin_url(data_dir, admin)
    try:
        reply = httpx.get(f"{url}/v1/status", timeout=5)
    except httpx.HTTPError as exc:
        fail(f"node at {url} is not answering: {exc}")
        raise
    data = reply.json()
    if json_out:
        import json

        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    node = data["node"]
    console = Console()
    state = "ready" if node["ready"] else "NOT READY (" + ", ".join(node["missing"]) + ")"
    console.print(f"node pid {node['pid']}  {state}  config v{node['config_version']}")
    for name, u in node["urls"].items():
        console.print(f"  {name:6} {u}")
    table = Table("service", "state", "healthy", "pid", "restarts", "detail")
    for s in data["services"]:
        table.add_row(
            s["service"],
            "QUARANTINED" if s["quarantined"] else s["state"],
            "yes" if s["healthy"] else "no",
            str(s["pid"] or "-"),
            str(s["restarts"]),
            s["detail"] + (f" (last: {s['last_reason']})" if s["last_reason"] else ""),
        )
    console.print(table)
    if not node["ready"]:
        raise typer.Exit(1)


@app.command()
def restart(
    service: Annotated[str, typer.Argument(help="Service name, as `ron status` shows it")],
    data_dir: DataDir = None,
    admin: AdminOpt = None,
) -> None:
    """Restart a service now; lifts its quarantine."""
    url = admin_url(data_dir, admin)
    reply = httpx.post(f"{url}/v1/services/{service}/restart", timeout=5)
    if reply.status_code >= 400:
        fail(reply.json().get("message", reply.text))
    typer.echo(f"restarting {service}")


@app.command()
def reload(data_dir: DataDir = None, admin: AdminOpt = None) -> None:
    """Reload the running node's config (same as SIGHUP)."""
    url = admin_url(data_dir, admin)
    reply = httpx.post(f"{url}/v1/config/reload", timeout=10)
    if reply.status_code >= 400:
        fail(reply.json().get("message", reply.text))
    typer.echo(reply.json()["message"])


def main() -> None:
    import ron.cli.cap  # registers `ron cap ...` and `ron audit ...`
    import ron.cli.content  # registers the content commands
    import ron.cli.mailbox  # noqa: F401  (registers `ron mailbox ...`)

    app()
    sys.exit(0)
