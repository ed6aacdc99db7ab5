"""ron.sdk: the Python SDK for RustyOnions nodes (docs/SDK.md).

``Client`` (sync) and ``AsyncClient`` speak the node's HTTP API (content and mailbox)
with retries, BLAKE3 verification and typed errors; :mod:`ron.sdk.e2e` seals mailbox
payloads end to end; :mod:`ron.sdk.oap` is an asyncio OAP/1 client.
"""

from __future__ import annotations

from typing import Any

from ron.proto.address import Address
from ron.sdk.aclient import AsyncClient, AsyncObjectReader, AsyncSubscription
from ron.sdk.client import Client, ObjectReader, Subscription
from ron.sdk.core import DEFAULT_NODE_URL, ClientConfig, InvalidArgument, ObjectStat
from ron.sdk.errors import (
    BadRequest,
    Conflict,
    E2EError,
    Forbidden,
    HeadersTooLarge,
    IntegrityError,
    InternalError,
    NotFound,
    PayloadTooLarge,
    PaymentRequired,
    QuotaExhausted,
    RangeNotSatisfiable,
    RequestTimeout,
    RonClientError,
    TransportError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from ron.sdk.mailbox import (
    DeadLetter,
    DeadLetterPage,
    Message,
    SendResult,
    Settled,
    TopicStats,
)
from ron.sdk.retry import RetryEvent, RetryPolicy

__all__ = [
    "DEFAULT_NODE_URL",
    "Address",
    "AsyncClient",
    "AsyncObjectReader",
    "AsyncSubscription",
    "BadRequest",
    "Client",
    "ClientConfig",
    "Conflict",
    "DeadLetter",
    "DeadLetterPage",
    "E2EError",
    "Forbidden",
    "HeadersTooLarge",
    "IntegrityError",
    "InternalError",
    "InvalidArgument",
    "Message",
    "NotFound",
    "OapClient",
    "ObjectReader",
    "ObjectStat",
    "PayloadTooLarge",
    "PaymentRequired",
    "QuotaExhausted",
    "RangeNotSatisfiable",
    "RequestTimeout",
    "RetryEvent",
    "RetryPolicy",
    "RonClientError",
    "SendResult",
    "Settled",
    "Subscription",
    "TopicStats",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]


def __getattr__(name: str) -> Any:
    # The OAP client pulls in the OAP codec and TLS setup: import it only when asked.
    if name == "OapClient":
        from ron.sdk.oap import OapClient

        return OapClient
    raise AttributeError(f"module 'ron.sdk' has no attribute {name!r}")
