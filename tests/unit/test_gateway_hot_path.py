"""The gateway's raw-ASGI mailbox path: the same JSON and routes as the /v1 app.

The hot routes render replies by hand and match paths by hand; these tests pin both to
what the generic path produces.
"""

from __future__ import annotations

import base64
import json

import pytest

from ron.proto.envelope import ErrorCode, RonError
from ron.services.gateway.bodies import parse_object, render_json
from ron.services.gateway.mailbox_hot import MailboxHotRoutes
from ron.services.mailbox.jsonwire import (
    batch_from_body,
    deliveries_body,
    delivery_json,
    outgoing_from_json,
    send_result_body,
    send_results_body,
)
from ron.services.mailbox.model import Delivery, SendResult


def _delivery(headers: dict[str, str]) -> Delivery:
    return Delivery(
        msg_id="01ARZ3NDEKTSV4RRFFQ69G5FAV",
        topic="t",
        payload=bytes(range(256)) * 5,
        headers=headers,
        delivery_count=3,
        enqueued_ms=1_700_000_000_123,
        receipt="01ARZ3NDEKTSV4RRFFQ69G5FAV.3.abcdefghijklmnopqrstuv",
    )


@pytest.mark.parametrize("headers", [{}, {"kind": "a"}, {"q": 'say "hi" \\ now', "z": "1"}])
def test_deliveries_render_like_the_generic_encoder(headers: dict[str, str]) -> None:
    d = _delivery(headers)
    for got in ([], [d], [d, _delivery({})]):
        want = {"messages": [delivery_json(x) for x in got]}
        assert deliveries_body(got) == render_json(want)
        assert json.loads(deliveries_body(got)) == want


def test_send_results_render_like_the_generic_encoder() -> None:
    results = [
        SendResult("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        SendResult("01ARZ3NDEKTSV4RRFFQ69G5FAW", True),
    ]
    want = {"messages": [{"msg_id": r.msg_id, "duplicate": r.duplicate} for r in results]}
    assert send_results_body(results) == render_json(want)
    for r, one in zip(results, want["messages"], strict=True):
        assert send_result_body(r) == render_json(one)


def test_batch_bodies_are_parsed_strictly() -> None:
    ok = b'{"messages": [{"payload_b64": "QUJD", "headers": {"k": "v"}, "idempotency_key": "x"}]}'
    (entry,) = batch_from_body(ok)
    assert (entry.payload, dict(entry.headers), entry.idempotency_key) == (b"ABC", {"k": "v"}, "x")
    for bad, why in [
        (b"", "a JSON object body is required"),
        (b"[]", "body must be a JSON object"),
        (b'{"messages": []}', "messages must be a list of 1..100"),
        (b'{"messages": [{"payload_b64": "QUJD"}], "x": 1}', "unknown key 'x'"),
        (b'{"messages": [1]}', "each message must be an object"),
        (b'{"messages": [{"payload_b64": "Q"}]}', "payload_b64 is not valid base64"),
        (b'{"messages": [{"payload_b64": "QUJD", "payload_b64": "QUJD"}]}', "duplicate key"),
    ]:
        with pytest.raises(RonError, match=why) as err:
            batch_from_body(bad)
        assert err.value.code is ErrorCode.BAD_REQUEST


def test_hot_routes_match_only_post_on_exact_shapes() -> None:
    routes = MailboxHotRoutes(lambda: None)  # type: ignore[arg-type,return-value]
    assert routes.match("POST", "/v1/mailbox/ack") == (routes.ack, "")
    assert routes.match("POST", "/v1/mailbox/nack") == (routes.nack, "")
    assert routes.match("POST", "/v1/mailbox/extend") == (routes.extend, "")
    assert routes.match("POST", "/v1/mailbox/t1/messages") == (routes.send, "t1")
    assert routes.match("POST", "/v1/mailbox/t1/batch") == (routes.send_batch, "t1")
    assert routes.match("POST", "/v1/mailbox/t1/receive") == (routes.receive, "t1")
    for method, path in [
        ("GET", "/v1/mailbox/t1/messages"),  # 405 from the /v1 app, as before
        ("POST", "/v1/mailbox/ack/"),  # trailing slash: the /v1 app's redirect
        ("POST", "/v1/mailbox//messages"),
        ("POST", "/v1/mailbox/t1/messages/"),
        ("POST", "/v1/mailbox/t1/dlq/redrive"),
        ("POST", "/v1/mailbox/t1/stats"),
        ("POST", "/v1/mailbox/other"),
    ]:
        assert routes.match(method, path) is None, (method, path)


def test_duplicate_and_unknown_keys_name_the_first_offender() -> None:
    allowed = frozenset({"a", "b"})
    with pytest.raises(RonError, match="duplicate key 'b'"):
        parse_object(b'{"a": 1, "b": 2, "b": 3, "a": 4}', allowed)
    with pytest.raises(RonError, match="unknown key 'c'"):
        parse_object(b'{"d": 1, "c": 2}', allowed)
    with pytest.raises(RonError) as err:
        parse_object(b'{"a": NaN}', allowed)
    assert err.value.code is ErrorCode.BAD_REQUEST
    assert parse_object(b" ", allowed, allow_empty=True) == {}


_BASE64_CASES = ["", "=", "QQ", "QQ=", "QQ==", "QQ===", "QUJD=", "QUJD", "QU JD", "QUJD\n"]
_BASE64_CASES += ["=QUJD", "QU=JD", "QUI=", "QUJDRA==x", "QUJD-_", "é"]
_BASE64_CASES.append(base64.b64encode(bytes(range(256))).decode())


@pytest.mark.parametrize("text", _BASE64_CASES)
def test_payload_base64_is_judged_as_the_reference_decoder_judges_it(text: str) -> None:
    try:
        want: bytes | None = base64.b64decode(text, validate=True)
    except ValueError:
        want = None
    try:
        got: bytes | None = outgoing_from_json({"payload_b64": text}).payload
    except RonError:
        got = None
    assert got == want
