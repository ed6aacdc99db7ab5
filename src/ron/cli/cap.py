"""``ron cap mint|inspect|attenuate|rotate|revoke|node-id`` and ``ron audit verify``.

These work offline against a data dir (``--data-dir``, else the config's), the way an
owner administers a node's capabilities with the node stopped or running: keyring and
revocation list are files that a running node re-reads when they change.

Tokens are bearer secrets. Commands that produce one print it as the *last* line of
stdout (``TOKEN=$(ron cap mint ... | tail -n1)``) and nothing else carries it; a token
to read may be given as ``-`` to take it from stdin, which keeps it out of ``ps``.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ron.cli.main import AdminOpt, DataDir, app, fail

if TYPE_CHECKING:
    from ron.auth import Authority, Token
    from ron.kernel.config import Config

cap_app = typer.Typer(
    no_args_is_help=True,
    help="Capability tokens: mint, inspect, attenuate; rotate root keys; revoke tokens.",
)
audit_app = typer.Typer(no_args_is_help=True, help="The node's tamper-evident audit log.")
app.add_typer(cap_app, name="cap")
app.add_typer(audit_app, name="audit")

TokenArg = Annotated[str, typer.Argument(help="The token (base64url), or - to read it from stdin")]

_DURATION = re.compile(r"([0-9]+)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d``, ``2w`` → seconds (> 0)."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None or int(m.group(1)) == 0:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 15m, 1h, 7d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (containers)
        return f"cli:uid={os.getuid()}"


def _config(data_dir: Path | None) -> Config:
    """The config for this invocation: what ``env_config`` builds, minus the node's imports."""
    from ron.kernel.config import ConfigError, load_config

    flags = {} if data_dir is None else {"data_dir": str(data_dir)}
    try:
        return load_config(None, dict(os.environ), flags)
    except ConfigError as exc:
        fail(f"invalid config: {exc}", 2)
        raise


def _authority(data_dir: Path | None) -> Authority:
    from ron.auth import Authority

    config = _config(data_dir)
    return Authority(config.data_dir, overlap_s=config.caps.rotation_overlap_s, actor=_actor())


def _read_token(text: str) -> Token:
    from ron.auth import Token
    from ron.proto.envelope import RonError

    if text == "-":
        text = sys.stdin.readline().strip()
    try:
        return Token.parse(text)
    except RonError as exc:
        fail(exc.message, 2)
        raise


def _admin_call(admin: str, route: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to a running node's admin API with the owner token.

    The token is ``RON_CAP``, else the owner token in the data dir the node reports in
    ``/v1/status``: reading that 0600 file is the proof of ownership (for an amnesia
    node the file is in its memory-backed directory, and this is the only way in).
    """
    import httpx

    from ron.auth.owner import read_owner_token

    url = admin if admin.startswith("http") else f"http://{admin}"
    try:
        token = os.environ.get("RON_CAP")
        if not token:
            status = httpx.get(f"{url}/v1/status", timeout=10).json()
            token = read_owner_token(Path(status["node"]["data_dir"]))
        if not token:
            fail("no owner token readable for that node; set RON_CAP")
        reply = httpx.post(
            f"{url}{route}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        fail(f"node at {url} is not answering: {exc}")
        raise
    data: dict[str, Any] = reply.json()
    if reply.status_code >= 400:
        fail(f"{data.get('code')}: {data.get('message')}")
    return data


def _run(action: Any) -> Any:
    """Run ``action()``; a RonError becomes a one-line message and exit status 1."""
    from ron.proto.envelope import RonError

    try:
        return action()
    except RonError as exc:
        fail(exc.message)
        raise


@cap_app.command()
def mint(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant the token acts for")],
    methods: Annotated[
        str | None, typer.Option("--methods", help="Allowed methods, e.g. GET,PUT")
    ] = None,
    path: Annotated[str | None, typer.Option("--path", help="Path prefix, e.g. /o/")] = None,
    addr: Annotated[str | None, typer.Option("--addr", help="Only this content address")] = None,
    topic: Annotated[
        str | None, typer.Option("--topic", help="Mailbox topic (or prefix ending in *)")
    ] = None,
    aud: Annotated[
        str | None,
        typer.Option("--aud", help="Node id the token is for (b3:...), or 'self'"),
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option("--max-bytes", min=0, help="Largest request body")
    ] = None,
    ttl: Annotated[str, typer.Option("--ttl", help="Lifetime: 90s, 15m, 1h, 7d, 2w")] = "1h",
    data_dir: DataDir = None,
    admin: AdminOpt = None,
) -> None:
    """Mint a token under the current root key; the token is the last line of stdout."""
    from ron.auth import token_caveats

    lifetime = parse_duration(ttl)
    if admin:
        fields: dict[str, Any] = {"methods": [m for m in (methods or "").split(",") if m.strip()]}
        optional = {"path": path, "addr": addr, "topic": topic, "aud": aud}
        fields.update({k: v for k, v in optional.items() if v is not None})
        minted = _admin_call(
            admin,
            "/v1/caps/mint",
            {"tenant": tenant, "ttl_s": lifetime, "max_bytes": max_bytes, **fields},
        )
        typer.echo(f"token_id: {minted['token_id']}")
        typer.echo(f"key_id: {minted['key_id']}")
        typer.echo(f"expires: {_iso(minted['expires'])}")
        typer.echo(minted["token"])
        return
    authority = _authority(data_dir)
    now = time.time()
    audience = _run(authority.identity).node_id if aud == "self" else aud
    caveats = _run(
        lambda: token_caveats(
            tenant=tenant,
            methods=[m for m in (methods or "").split(",") if m.strip()],
            path=path,
            addr=addr,
            topic=topic,
            aud=audience,
            max_bytes=max_bytes,
            expires=int(now) + lifetime,
        )
    )
    token = _run(lambda: authority.mint(caveats, now=now))
    typer.echo(f"token_id: {token.token_id_hex}")
    typer.echo(f"key_id: {token.key_id}")
    typer.echo(f"expires: {_iso(int(now) + lifetime)}")
    typer.echo(token.serialize())


@cap_app.command()
def inspect(
    token: TokenArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    data_dir: DataDir = None,
) -> None:
    """Show a token's key id, token id, expiry and caveats (never a key or signature).

    When the data dir holds the keyring the token was minted under, also say whether it
    verifies there now.
    """
    parsed = _read_token(token)
    exps = [int(v) for v in parsed.values("exp")]
    expires = min(exps) if exps else None
    tenants = parsed.values("tenant")
    info: dict[str, Any] = {
        "version": 1,
        "key_id": parsed.key_id,
        "token_id": parsed.token_id_hex,
        "tenant": tenants[0] if tenants else None,
        "expires": _iso(expires) if expires is not None else None,
        "caveats": [str(c) for c in parsed.caveats],
    }
    status = _local_status(parsed, data_dir)
    if status is not None:
        info["status"] = status
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    for key in ("key_id", "token_id", "tenant", "expires"):
        value = info[key]
        if key == "expires" and expires is not None:
            left = expires - time.time()
            value = f"{value} ({'expired' if left <= 0 else f'in {_human(left)}'})"
        typer.echo(f"{key}: {value if value is not None else '-'}")
    typer.echo("caveats:")
    for c in info["caveats"]:
        typer.echo(f"  {c}")
    if status is not None:
        typer.echo(f"status: {status}")


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _local_status(parsed: Token, data_dir: Path | None) -> str | None:
    """Does the token verify against the data dir's keyring right now? None: no keyring."""
    from ron.auth import AuthPaths, NodeIdentity, Verifier
    from ron.proto.envelope import RonError

    config = _config(data_dir)
    paths = AuthPaths(config.data_dir)
    if not paths.keyring.exists():
        return None
    try:
        verifier = Verifier.from_data_dir(config.data_dir, overlap_s=config.caps.rotation_overlap_s)
        if verifier.keyring.get(parsed.key_id) is None:
            return "not minted under this data dir's keys"
        node_id = NodeIdentity.load(paths.node_key).node_id if paths.node_key.exists() else None
        verifier.authenticate(parsed.serialize(), audience=node_id)
    except RonError as exc:
        return f"refused: {exc.message}"
    return "valid here now"


@cap_app.command()
def attenuate(
    token: TokenArg,
    caveat: Annotated[
        list[str] | None,
        typer.Option("--caveat", "-c", help="Caveat to append, KEY=VALUE (repeatable)"),
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Shorthand for --caveat exp=<now + TTL>")
    ] = None,
) -> None:
    """Append caveats to a token, offline and without any key; prints the new token.

    Caveats only narrow: the new token allows what the old one allowed AND what the new
    caveats allow. Revoking the original token id revokes this one too.
    """
    from ron.auth import caveat as make_caveat
    from ron.auth import parse_caveat_text

    parsed = _read_token(token)
    extra = [_run(lambda text=text: parse_caveat_text(text)) for text in caveat or []]
    if ttl is not None:
        extra.append(make_caveat("exp", str(int(time.time()) + parse_duration(ttl))))
    if not extra:
        fail("give at least one --caveat KEY=VALUE or --ttl", 2)
    narrowed = _run(lambda: parsed.attenuate(*extra))
    typer.echo(f"token_id: {narrowed.token_id_hex}")
    typer.echo(narrowed.serialize())


@cap_app.command()
def rotate(data_dir: DataDir = None, admin: AdminOpt = None) -> None:
    """Make a new root key; tokens of the previous one work for the overlap, then fail."""
    if admin:
        done = _admin_call(admin, "/v1/caps/rotate", {})
        typer.echo(f"current key: {done['key_id']}")
        if done["retired"] is not None:
            until = done["retired_valid_until"] or 0
            typer.echo(f"retired key: {done['retired']} (its tokens verify until {_iso(until)})")
        return
    authority = _authority(data_dir)
    key, retired = _run(authority.rotate)
    typer.echo(f"current key: {key.key_id}")
    if retired is not None:
        until = retired.valid_until(authority.overlap_s) or 0
        typer.echo(f"retired key: {retired.key_id} (its tokens verify until {_iso(until)})")


@cap_app.command()
def revoke(
    token_id: Annotated[
        str, typer.Argument(help="Token id (32 hex, from `ron cap inspect`) or the token itself")
    ],
    data_dir: DataDir = None,
    admin: AdminOpt = None,
) -> None:
    """Revoke a token (and every attenuation of it); applies to a running node at once."""
    tid = token_id.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", tid):
        tid = _read_token(token_id.strip()).token_id_hex
    if admin:
        done = _admin_call(admin, "/v1/caps/revoke", {"token_id": tid})
        state = "revoked" if done["new"] else "already revoked"
        typer.echo(f"{state} {done['token_id']} (revocation seq {done['seq']})")
        return
    authority = _authority(data_dir)
    entry, new = _run(lambda: authority.revoke(tid))
    state = "revoked" if new else "already revoked"
    typer.echo(f"{state} {entry.token_id} (revocation seq {entry.seq})")


@cap_app.command("node-id")
def node_id(data_dir: DataDir = None) -> None:
    """Print this node's id (b3: of its Ed25519 public key), for --aud."""
    authority = _authority(data_dir)
    typer.echo(_run(authority.identity).node_id)


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDir = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Audit log to check [default: the data dir's]")
    ] = None,
) -> None:
    """Check the audit log's hash chain; name the first bad record and exit 1 if any."""
    from ron.auth import AuthPaths, verify_audit_log

    if file is None:
        file = AuthPaths(_config(data_dir).data_dir).audit_log
    report = verify_audit_log(file)
    if report.ok:
        typer.echo(f"ok: {report.records} records, chain intact")
        if report.head:
            typer.echo(f"head: {report.head}")
        return
    where = f"record {report.line} (line {report.line})" if report.line else "log"
    typer.echo(f"FAILED: {file}: {where}: {report.reason}", err=True)
    typer.echo(f"{report.records} records verified before it", err=True)
    raise typer.Exit(1)
