"""Capabilities enforced by a real node: the gateway, omnigate, the mailbox, the admin API.

Tokens are minted offline against the running node's data dir (``Authority``), exactly
as ``ron cap mint`` does; the node re-reads its keyring and revocation list when they
change, so nothing here restarts it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ron.auth import Authority, Token, token_caveats
from ron.proto.envelope import ErrorCode, RonError
from ron.proto.oap import AppId
from ron.sdk.oap import OapClient
from support.node import RON, RunningNode, run_node
from support.oap import ca_file
from support.waiting import wait_until_sync

OTHER_NODE = "b3:" + "0" * 64


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with run_node(tmp_path_factory.mktemp("caps")) as n:
        yield n


def authority(node: RunningNode) -> Authority:
    return Authority(node.data_dir, overlap_s=7 * 86400, actor="test")


def mint(node: RunningNode, **caveats: object) -> str:
    auth = authority(node)
    caveats.setdefault("tenant", "alice")
    token = auth.mint(token_caveats(**caveats))  # type: ignore[arg-type]
    return token.serialize()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def put(node: RunningNode, data: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{node.http}/put", content=data, headers=headers, timeout=30)


def refused(reply: httpx.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["code"] == ("unauthorized" if status == 401 else "forbidden")
    return str(body["message"])


# --- the owner token --------------------------------------------------------------------


def test_owner_token_is_written_0600_and_works(node: RunningNode) -> None:
    path = node.data_dir / "auth" / "owner.token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert node.token
    reply = put(node, b"owner's bytes", node.auth)
    assert reply.status_code == 201, reply.text


def test_cli_put_finds_the_owner_token_of_the_local_node(node: RunningNode, tmp_path: Path) -> None:
    file = tmp_path / "f.txt"
    file.write_bytes(b"from the cli")
    out = subprocess.run(
        [RON, "put", str(file), "--data-dir", str(node.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("b3:")


# --- 401: who are you? --------------------------------------------------------------


def test_missing_token_is_401_with_www_authenticate(node: RunningNode) -> None:
    reply = put(node, b"x", {})
    refused(reply, 401)
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert reply.headers["x-corr-id"]


def test_one_flipped_byte_is_401(node: RunningNode) -> None:
    token = mint(node)
    raw = bytearray(Token.parse(token).to_bytes())
    raw[-1] ^= 0x01
    flipped = Token.from_bytes(bytes(raw)).serialize()
    assert "bad signature" in refused(put(node, b"x", bearer(flipped)), 401)


def test_expired_token_is_401(node: RunningNode) -> None:
    token = mint(node, expires=int(time.time()) - 5)
    assert "expired" in refused(put(node, b"x", bearer(token)), 401)


def test_token_for_another_node_is_401(node: RunningNode) -> None:
    token = mint(node, aud=OTHER_NODE)
    assert "another node" in refused(put(node, b"x", bearer(token)), 401)


def test_revoked_token_is_401_without_restart(node: RunningNode) -> None:
    token = mint(node)
    assert put(node, b"before revoke", bearer(token)).status_code == 201
    authority(node).revoke(Token.parse(token).token_id_hex)
    # The node looks at its revocation list at most every 100 ms: within that, refused.
    reply = wait_until_sync(
        lambda: (r := put(node, b"after revoke", bearer(token))).status_code == 401 and r,
        5,
        "the revocation to apply",
    )
    assert "revoked" in refused(reply, 401)


def test_bad_token_on_a_public_read_is_refused_not_ignored(node: RunningNode) -> None:
    addr = put(node, b"public", node.auth).json()["address"]
    assert httpx.get(f"{node.http}/o/{addr}", timeout=10).status_code == 200
    reply = httpx.get(f"{node.http}/o/{addr}", headers=bearer("garbage"), timeout=10)
    refused(reply, 401)


def test_refusals_are_counted(node: RunningNode) -> None:
    before = node.metric("rejected_total", reason="unauthorized")
    put(node, b"x", {})
    assert node.metric("rejected_total", reason="unauthorized") == before + 1


# --- 403: may you do this? ------------------------------------------------------------


def test_methods_caveat_forbids_a_put(node: RunningNode) -> None:
    token = mint(node, methods=["GET"])
    refused(put(node, b"x", bearer(token)), 403)


def test_path_caveat_forbids_other_paths(node: RunningNode) -> None:
    token = mint(node, path="/o/")
    refused(put(node, b"x", bearer(token)), 403)
    put_token = mint(node, methods=["PUT"], path="/put")
    assert put(node, b"allowed", bearer(put_token)).status_code == 201


def test_addr_caveat_allows_one_object_only(node: RunningNode) -> None:
    a = put(node, b"object a", node.auth).json()["address"]
    b = put(node, b"object b", node.auth).json()["address"]
    token = mint(node, addr=a)
    assert httpx.get(f"{node.http}/o/{a}", headers=bearer(token), timeout=10).status_code == 200
    refused(httpx.get(f"{node.http}/o/{b}", headers=bearer(token), timeout=10), 403)


def test_max_bytes_caveat(node: RunningNode) -> None:
    token = mint(node, max_bytes=10)
    assert put(node, b"0123456789", bearer(token)).status_code == 201
    refused(put(node, b"0123456789A", bearer(token)), 403)

    def chunked() -> Iterator[bytes]:
        yield b"0123456"
        yield b"89ABCDEF"

    reply = httpx.post(f"{node.http}/put", content=chunked(), headers=bearer(token), timeout=30)
    assert reply.status_code == 413, reply.text


def test_topic_caveat_on_mailbox_routes(node: RunningNode) -> None:
    chat = mint(node, topic="chat.*")
    url = f"{node.http}/v1/mailbox"
    ok = httpx.post(f"{url}/chat.room1/messages", content=b"hi", headers=bearer(chat), timeout=10)
    assert ok.status_code == 201, ok.text
    refused(
        httpx.post(f"{url}/billing/messages", content=b"x", headers=bearer(chat), timeout=10), 403
    )
    refused(httpx.get(f"{url}/billing/stats", headers=bearer(chat), timeout=10), 403)
    # A receipt of another topic cannot be acked with a token for chat.* (the topic
    # comes from the message the receipt names, not from the request).
    httpx.post(f"{url}/billing/messages", content=b"secret", headers=node.auth, timeout=10)
    got = httpx.post(f"{url}/billing/receive", json={}, headers=node.auth, timeout=10).json()
    receipt = got["messages"][0]["receipt"]
    refused(
        httpx.post(f"{url}/ack", json={"receipts": [receipt]}, headers=bearer(chat), timeout=10),
        403,
    )
    # ...and the message is still leased, not acked: the owner acks it.
    done = httpx.post(f"{url}/ack", json={"receipts": [receipt]}, headers=node.auth, timeout=10)
    assert done.json() == {"acked": 1, "gone": 0}


def test_a_receive_that_acks_is_checked_as_an_ack_too(node: RunningNode) -> None:
    url = f"{node.http}/v1/mailbox"
    httpx.post(f"{url}/jobs/messages", content=b"one", headers=node.auth, timeout=10)
    httpx.post(f"{url}/other/messages", content=b"not yours", headers=node.auth, timeout=10)
    mine = httpx.post(f"{url}/jobs/receive", json={}, headers=node.auth, timeout=10).json()
    theirs = httpx.post(f"{url}/other/receive", json={}, headers=node.auth, timeout=10).json()
    # A token confined to the jobs routes may receive there, but not ack (the ack route
    # is outside its path), so it cannot ack by way of a receive either.
    receiver = mint(node, path="/v1/mailbox/jobs/")
    ack = {"ack": [mine["messages"][0]["receipt"]]}
    plain = httpx.post(f"{url}/jobs/receive", json={}, headers=bearer(receiver), timeout=10)
    assert plain.status_code == 200 and plain.json() == {"messages": []}
    refused(httpx.post(f"{url}/jobs/receive", json=ack, headers=bearer(receiver), timeout=10), 403)
    # A token for the jobs topic cannot ack another topic's message through a receive.
    jobs = mint(node, topic="jobs")
    other = {"ack": [theirs["messages"][0]["receipt"]]}
    refused(httpx.post(f"{url}/jobs/receive", json=other, headers=bearer(jobs), timeout=10), 403)
    # Both messages are still leased, not acked; the topic token acks its own.
    done = httpx.post(f"{url}/jobs/receive", json=ack, headers=bearer(jobs), timeout=10).json()
    assert (done["acked"], done["gone"]) == (1, 0)
    left = httpx.post(f"{url}/ack", json={"receipts": other["ack"]}, headers=node.auth, timeout=10)
    assert left.json() == {"acked": 1, "gone": 0}


def test_mailbox_needs_a_token(node: RunningNode) -> None:
    refused(httpx.post(f"{node.http}/v1/mailbox/t/receive", json={}, timeout=10), 401)


def test_tenant_of_the_token_is_the_quota_tenant(node: RunningNode) -> None:
    token = mint(node, tenant="bob")
    reply = put(node, b"bob's", bearer(token))
    assert reply.status_code == 201
    # The request log is flushed in batches: wait for the line, then check it.
    wait_until_sync(lambda: '"tenant":"bob"' in node.logs(), 20, "bob's request line")
    assert token not in node.logs()


# --- private bundles --------------------------------------------------------------------


def test_a_private_bundle_is_served_to_token_holders_only(node: RunningNode) -> None:
    reply = httpx.post(
        f"{node.http}/put?private=true", content=b"for my eyes", headers=node.auth, timeout=30
    )
    assert reply.status_code == 201 and reply.json()["private"] is True
    addr = reply.json()["address"]
    url = f"{node.http}/o/{addr}"
    refused(httpx.get(url, timeout=10), 401)
    refused(httpx.get(f"{url}/Manifest.toml", timeout=10), 401)
    got = httpx.get(url, headers=node.auth, timeout=10)
    assert got.content == b"for my eyes"
    assert got.headers["cache-control"].startswith("private")
    other = put(node, b"someone else's", node.auth).json()["address"]
    refused(httpx.get(url, headers=bearer(mint(node, addr=other)), timeout=10), 403)
    assert httpx.get(url, headers=bearer(mint(node, addr=addr)), timeout=10).status_code == 200
    # The first PUT decided: the same bytes put publicly stay private.
    again = put(node, b"for my eyes", node.auth).json()
    assert again["address"] == addr and again["private"] is True


async def test_a_private_bundle_over_oap_needs_a_grant_that_covers_it(node: RunningNode) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(
            f"{node.http}/put?private=1", content=b"private over oap", headers=node.auth
        )
    addr = reply.json()["address"]
    async with await oap(node, mint(node, addr=addr)) as c:
        assert await c.request(AppId.STORAGE, {"op": "get", "addr": addr}) == b"private over oap"
    async with await oap(node, mint(node, path="/o/b3:0")) as c:
        with pytest.raises(RonError) as err:
            await c.request(AppId.STORAGE, {"op": "get", "addr": addr})
        assert err.value.code is ErrorCode.FORBIDDEN


def test_a_public_put_of_bytes_asked_private_later_says_they_stay_public(node: RunningNode) -> None:
    addr = put(node, b"already public", node.auth).json()["address"]
    reply = httpx.post(
        f"{node.http}/put?private=1", content=b"already public", headers=node.auth, timeout=30
    )
    assert reply.json() == {**reply.json(), "address": addr, "private": False}
    assert httpx.get(f"{node.http}/o/{addr}", timeout=10).status_code == 200
    bad = httpx.post(f"{node.http}/put?private=maybe", content=b"x", headers=node.auth, timeout=30)
    assert bad.status_code == 400


# --- attenuation ------------------------------------------------------------------------


def test_attenuation_offline_narrows_and_cannot_widen(node: RunningNode) -> None:
    broad = mint(node)
    out = subprocess.run(
        [RON, "cap", "attenuate", "-", "-c", "methods=GET"],
        input=broad + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    narrow = out.stdout.strip().splitlines()[-1]
    refused(put(node, b"x", bearer(narrow)), 403)
    # Appending a broader caveat does not lift the narrower one: all must hold.
    wider = Token.parse(narrow).attenuate(
        *token_caveats(tenant="alice", methods=["GET", "PUT"])[1:]
    )
    refused(put(node, b"x", bearer(wider.serialize())), 403)


# --- rotation ---------------------------------------------------------------------------


def test_rotation_keeps_old_tokens_for_the_overlap_then_not(tmp_path: Path) -> None:
    config = "[caps]\nrotation_overlap_s = 3600\n"
    with run_node(tmp_path, config=config) as n:
        old = mint(n)
        authority(n).rotate()
        assert put(n, b"old key, inside overlap", bearer(old)).status_code == 201
        assert put(n, b"new key", bearer(mint(n))).status_code == 201
        # The overlap ends (here: the owner shortens it to 0 and reloads).
        assert n.config_file is not None
        n.config_file.write_text("[caps]\nrotation_overlap_s = 0\n")
        httpx.post(f"{n.admin}/v1/config/reload", timeout=10).raise_for_status()
        wait_until_sync(
            lambda: put(n, b"old key, overlap over", bearer(old)).status_code == 401,
            20,
            "the old key's tokens to stop working",
        )
        assert put(n, b"new key still", bearer(mint(n))).status_code == 201


# --- OAP --------------------------------------------------------------------------------


async def oap(node: RunningNode, cap: str | None) -> OapClient:
    return await OapClient.connect(
        node.urls["oap"], ca_file=ca_file(node.data_dir), cap=cap if cap is not None else b""
    )


async def test_oap_request_without_token_is_401_and_with_it_served(node: RunningNode) -> None:
    addr = put(node, b"over oap", node.auth).json()["address"]
    async with await oap(node, "") as c:
        with pytest.raises(RonError) as err:
            await c.request(AppId.STORAGE, {"op": "get", "addr": addr})
        assert err.value.code is ErrorCode.UNAUTHORIZED
    async with await oap(node, node.token) as c:
        assert await c.request(AppId.STORAGE, {"op": "get", "addr": addr}) == b"over oap"


async def test_oap_topic_caveat_is_403(node: RunningNode) -> None:
    async with await oap(node, mint(node, topic="chat")) as c:
        with pytest.raises(RonError) as err:
            await c.request(AppId.MAILBOX, {"op": "send", "topic": "other", "payload_b64": ""})
        assert err.value.code is ErrorCode.FORBIDDEN
        sent = await c.request(AppId.MAILBOX, {"op": "send", "topic": "chat", "payload_b64": ""})
        assert "msg_id" in json.loads(sent)


async def test_hello_revocation_sequence_rises_after_a_revoke(node: RunningNode) -> None:
    async with await oap(node, node.token) as c:
        before = (await c.hello())["revocation_seq"]
        authority(node).revoke(Token.parse(mint(node)).token_id_hex)
        after = (await c.hello())["revocation_seq"]
        assert after == before + 1
        assert (await c.hello())["node_id"].startswith("b3:")


def test_revocation_feed_on_gateway_and_admin(node: RunningNode) -> None:
    token_id = Token.parse(mint(node)).token_id_hex
    entry, _ = authority(node).revoke(token_id)
    for base in (node.http, node.admin):
        feed = httpx.get(f"{base}/v1/caps/revocations?since={entry.seq - 1}", timeout=10).json()
        assert feed["seq"] >= entry.seq
        assert feed["entries"][0]["token_id"] == token_id
        assert httpx.get(f"{base}/v1/caps/revocations?since=-1", timeout=10).status_code == 400


# --- the admin API and the CLI through it -----------------------------------------------------


def test_cli_mints_and_revokes_through_the_admin_address(node: RunningNode) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    args = [RON, "cap", "mint", "--tenant", "carol", "--methods", "PUT", "--admin", node.admin]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    assert put(node, b"carol's", bearer(token)).status_code == 201
    revoke = [RON, "cap", "revoke", token, "--admin", node.admin]
    out = subprocess.run(revoke, capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    wait_until_sync(
        lambda: put(node, b"carol again", bearer(token)).status_code == 401,
        5,
        "the revocation to apply",
    )


def test_admin_changes_need_the_owner_token(node: RunningNode) -> None:
    body = {"tenant": "mallory"}
    refused(httpx.post(f"{node.admin}/v1/caps/mint", json=body, timeout=10), 401)
    other = mint(node, tenant="mallory")
    refused(
        httpx.post(f"{node.admin}/v1/caps/mint", json=body, headers=bearer(other), timeout=10), 403
    )
    narrowed = mint(node, tenant="owner", path="/o/")
    reply = httpx.post(f"{node.admin}/v1/caps/rotate", headers=bearer(narrowed), timeout=10)
    refused(reply, 403)


# --- audit ------------------------------------------------------------------------------


def test_audit_log_of_a_real_node_verifies_and_detects_one_edited_byte(tmp_path: Path) -> None:
    with run_node(tmp_path, config="") as n:
        assert n.config_file is not None
        httpx.post(f"{n.admin}/v1/config/reload", timeout=10).raise_for_status()
        log = n.data_dir / "audit" / "audit.jsonl"
        events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
        assert events[:2] == ["rotate", "mint"]  # first key, owner token
        assert "config_reload" in events
    ok = subprocess.run(
        [RON, "audit", "verify", "--file", str(log)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    data = bytearray(log.read_bytes())
    second = data.index(b"\n") + 1
    at = data.index(b'"event"', second)
    data[at + 10] ^= 0x01  # one byte inside record 2
    log.write_bytes(bytes(data))
    bad = subprocess.run(
        [RON, "audit", "verify", "--file", str(log)], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert "record 2" in bad.stderr
