"""``ron mailbox send|recv|ack|tail|stats``: the mailbox from the command line.

Everything goes through the node's HTTP API (docs/specs/HTTP-API.md, "Mailbox").
Received messages print as one JSON object per line (``payload_b64`` holds the bytes),
so the output composes with ``jq``; ``--raw`` prints payload bytes instead. Receipts
are what ``ron mailbox ack`` takes.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from ron.cli.content import NodeOpt, node_auth, node_url
from ron.cli.main import DataDir, app, fail

mailbox_app = typer.Typer(
    no_args_is_help=True,
    help="Send, receive and acknowledge messages of the node's mailbox.",
)
app.add_typer(mailbox_app, name="mailbox")

Topic = Annotated[str, typer.Argument(help="Topic: 1-128 of letters, digits, . _ -")]
HEADER_PREFIX = "X-Ron-Header-"


def _error(reply: httpx.Response) -> str:
    try:
        body = reply.json()
        return f"{body['code']}: {body['message']} (corr_id {body['corr_id']})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {reply.status_code}"


def _call(method: str, url: str, auth: dict[str, str], **kwargs: Any) -> Any:
    kwargs["headers"] = {**kwargs.get("headers", {}), **auth}
    try:
        reply = httpx.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"node at {url} is not answering: {exc}")
        raise
    if reply.status_code >= 400:
        fail(_error(reply))
    return reply.json()


def _line(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


@mailbox_app.command()
def send(
    topic: Topic,
    file: Annotated[
        Path | None,
        typer.Option("-f", "--file", exists=True, dir_okay=False, help="Payload file"),
    ] = None,
    data: Annotated[str | None, typer.Option("-d", "--data", help="Payload text")] = None,
    header: Annotated[
        list[str] | None, typer.Option("-H", "--header", help="Message header NAME=VALUE")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Idempotency key (dedup window applies)")
    ] = None,
    node: NodeOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Send one message (payload from --file, --data or stdin); prints its msg_id."""
    if file is not None and data is not None:
        fail("give --file or --data, not both", 2)
    payload = (
        file.read_bytes()
        if file is not None
        else data.encode()
        if data is not None
        else sys.stdin.buffer.read()
    )
    headers = {}
    for item in header or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"header {item!r} is not NAME=VALUE", 2)
        headers[HEADER_PREFIX + name] = value
    if key is not None:
        headers["Idempotency-Key"] = key
    url = node_url(node, data_dir)
    auth = node_auth(url, data_dir)
    reply = _call(
        "POST",
        f"{url}/v1/mailbox/{topic}/messages",
        auth,
        content=payload,
        headers=headers,
        timeout=30,
    )
    if reply.get("duplicate"):
        typer.echo("duplicate: the idempotency key was seen within the window", err=True)
    typer.echo(reply["msg_id"])


@mailbox_app.command()
def recv(
    topic: Topic,
    max_messages: Annotated[int, typer.Option("-n", "--max", help="At most this many (1-100)")] = 1,
    visibility: Annotated[
        float | None, typer.Option("--visibility", help="Lease seconds [node default]")
    ] = None,
    wait: Annotated[float, typer.Option("--wait", help="Long-poll up to this many s")] = 0.0,
    ack_now: Annotated[bool, typer.Option("--ack", help="Acknowledge what was printed")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Print payload bytes only")] = False,
    node: NodeOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Lease messages and print them (one JSON object per line); exit 1 if none came."""
    url = node_url(node, data_dir)
    auth = node_auth(url, data_dir)
    body: dict[str, Any] = {"max": max_messages, "wait_s": wait}
    if visibility is not None:
        body["visibility_s"] = visibility
    reply = _call("POST", f"{url}/v1/mailbox/{topic}/receive", auth, json=body, timeout=wait + 30)
    messages = reply["messages"]
    for m in messages:
        if raw:
            sys.stdout.buffer.write(base64.b64decode(m["payload_b64"]))
            sys.stdout.buffer.flush()
        else:
            typer.echo(_line(m))
    if ack_now and messages:
        _call(
            "POST",
            f"{url}/v1/mailbox/ack",
            auth,
            json={"receipts": [m["receipt"] for m in messages]},
            timeout=30,
        )
    if not messages:
        raise typer.Exit(1)


@mailbox_app.command()
def ack(
    receipts: Annotated[list[str], typer.Argument(help="Receipts from recv or tail")],
    node: NodeOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Acknowledge (remove) leased messages; a stale receipt fails with 409."""
    url = node_url(node, data_dir)
    auth = node_auth(url, data_dir)
    reply = _call("POST", f"{url}/v1/mailbox/ack", auth, json={"receipts": receipts}, timeout=30)
    typer.echo(
        f"acked {reply['acked']}" + (f", {reply['gone']} already gone" * bool(reply["gone"]))
    )


@mailbox_app.command()
def tail(
    topic: Topic,
    ack_each: Annotated[
        bool,
        typer.Option(
            "--ack/--no-ack",
            help="Acknowledge each message once printed (--no-ack: they come back later)",
        ),
    ] = True,
    count: Annotated[int | None, typer.Option("-c", "--count", help="Stop after this many")] = None,
    visibility: Annotated[
        float | None, typer.Option("--visibility", help="Lease seconds [node default]")
    ] = None,
    max_unacked: Annotated[
        int | None, typer.Option("--max-unacked", help="Leases held at once [node default]")
    ] = None,
    node: NodeOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Follow a topic (Server-Sent Events): print messages as they arrive."""
    url = node_url(node, data_dir)
    auth = node_auth(url, data_dir)
    params: dict[str, Any] = {}
    if visibility is not None:
        params["visibility_s"] = visibility
    if max_unacked is not None:
        params["max_unacked"] = max_unacked
    seen = 0
    timeout = httpx.Timeout(30, read=None)
    try:
        with (
            httpx.Client(timeout=timeout, headers=auth) as client,
            client.stream("GET", f"{url}/v1/mailbox/{topic}/subscribe", params=params) as stream,
        ):
            if stream.status_code >= 400:
                stream.read()
                fail(_error(stream))
            for event, data in _sse(stream.iter_lines()):
                if event == "error":
                    fail(json.loads(data).get("message", data))
                if event != "message":
                    continue
                message = json.loads(data)
                typer.echo(_line(message))
                if ack_each:
                    reply = client.post(
                        f"{url}/v1/mailbox/ack", json={"receipts": [message["receipt"]]}
                    )
                    if reply.status_code >= 400:
                        typer.echo(f"ack failed: {_error(reply)}", err=True)
                seen += 1
                if count is not None and seen >= count:
                    return
    except httpx.HTTPError as exc:
        fail(f"subscription to {url} ended: {exc}")
    except KeyboardInterrupt:
        return


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from SSE lines; comments (heartbeats) are skipped."""
    event = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event = "message"
            data = []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


@mailbox_app.command()
def stats(
    topic: Topic,
    json_out: Annotated[bool, typer.Option("--json", help="Print raw JSON")] = False,
    node: NodeOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Show a topic's depth, in-flight, delayed and dead-letter counts."""
    url = node_url(node, data_dir)
    auth = node_auth(url, data_dir)
    data = _call("GET", f"{url}/v1/mailbox/{topic}/stats", auth, timeout=30)
    if json_out:
        typer.echo(json.dumps(data, indent=2))
        return
    for key in ("depth", "in_flight", "delayed", "dlq_depth", "oldest_age_s", "max_deliveries"):
        typer.echo(f"{key:15} {data[key]}")
