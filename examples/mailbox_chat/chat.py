"""End-to-end encrypted terminal chat through a RustyOnions mailbox.

    python examples/mailbox_chat/chat.py --me alice --peer bob     # terminal 1
    python examples/mailbox_chat/chat.py --me bob --peer alice     # terminal 2

Each person has an X25519 key pair in the keys directory (``--keys``, default
``./chat-keys``): ``<name>.key`` (mode 0600, made on first run) and ``<name>.pub``.
Exchange the ``.pub`` files (on one machine the shared directory does it); the client
waits until the peer's public key is there.

A line typed is sealed to the peer's public key and authenticated with your own
(``ron.sdk.e2e``), then sent to the peer's inbox topic ``chat.<peer>``. Incoming
messages arrive by subscription on ``chat.<me>``, are opened, checked to come from the
peer's key, printed as ``<peer> text`` and acknowledged. The node only ever stores
ciphertext. End with Ctrl-D.

``--node`` (or ``RON_NODE_URL``) picks the node; ``RON_API_KEY`` is honoured.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from ron.sdk import Client, ClientConfig, RonClientError, Subscription
from ron.sdk.e2e import E2EError, PrivateKey, PublicKey, seal, unseal

PEER_KEY_POLL_S = 0.2


def say(text: str) -> None:
    print(text, flush=True)


def load_or_make_key(keys: Path, name: str) -> PrivateKey:
    path = keys / f"{name}.key"
    if path.exists():
        return PrivateKey.load(path)
    key = PrivateKey.generate()
    key.save(path)
    key.public_key.save(keys / f"{name}.pub", overwrite=True)
    return key


def wait_for_peer_key(keys: Path, peer: str) -> PublicKey:
    path = keys / f"{peer}.pub"
    if not path.exists():
        say(f"* waiting for {path} (share your .pub file with {peer})")
    while not path.exists():  # a file appearing has no event to wait on portably
        time.sleep(PEER_KEY_POLL_S)
    return PublicKey.load(path)


def receive_loop(
    client: Client, inbox: Subscription, peer: str, key: PrivateKey, peer_key: PublicKey
) -> None:
    for msg in inbox:
        try:
            opened = unseal(msg.payload, recipient=key, sender=peer_key)
            text = json.loads(opened.plaintext)["text"]
        except (E2EError, ValueError, KeyError):
            say(f"* dropped a message that was not sealed by {peer}")
        else:
            say(f"<{peer}> {text}")
        client.ack(msg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--me", required=True, help="your name (your inbox is chat.<me>)")
    parser.add_argument("--peer", required=True, help="who you talk to")
    parser.add_argument("--keys", type=Path, default=Path("chat-keys"), help="key directory")
    parser.add_argument("--node", help="the node's HTTP URL (default: $RON_NODE_URL)")
    args = parser.parse_args(argv)

    args.keys.mkdir(parents=True, exist_ok=True)
    key = load_or_make_key(args.keys, args.me)
    peer_key = wait_for_peer_key(args.keys, args.peer)
    say(
        f"* you are {args.me} ({key.public_key.fingerprint}); {args.peer} is {peer_key.fingerprint}"
    )

    client = Client(config=ClientConfig.from_env(base_url=args.node))
    inbox = client.subscribe(f"chat.{args.me}", visibility_s=60)
    receiver = threading.Thread(
        target=receive_loop, args=(client, inbox, args.peer, key, peer_key), daemon=True
    )
    receiver.start()
    if not inbox.connected.wait(30):
        say("* could not reach the node")
        return 1
    say(f"* ready: type a line to send it to {args.peer}, Ctrl-D to quit")
    seq = 0
    try:
        for line in sys.stdin:
            text = line.rstrip("\n")
            if not text:
                continue
            seq += 1
            # Inside the seal: the text plus a counter and a timestamp, so a replayed
            # ciphertext is recognisable to an app that cares.
            plaintext = json.dumps({"text": text, "seq": seq, "ts": time.time()}).encode()
            sealed = seal(plaintext, sender=key, recipient=peer_key)
            try:
                client.send(f"chat.{args.peer}", sealed)
            except RonClientError as exc:
                say(f"* not sent: {exc}")
    except KeyboardInterrupt:
        pass
    finally:
        inbox.close()
        receiver.join(10)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
