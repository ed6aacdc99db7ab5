"""The mailbox: a durable store-and-forward queue (REFERENCE §6, docs/specs/HTTP-API.md)."""

from ron.services.mailbox.api import MailboxAPI, subscription
from ron.services.mailbox.model import (
    DeadLetter,
    DeadLetterPage,
    Delivery,
    Outgoing,
    SendResult,
    Settled,
    SubscriptionPoll,
    TopicStats,
)

__all__ = [
    "DeadLetter",
    "DeadLetterPage",
    "Delivery",
    "MailboxAPI",
    "Outgoing",
    "SendResult",
    "Settled",
    "SubscriptionPoll",
    "TopicStats",
    "subscription",
]
