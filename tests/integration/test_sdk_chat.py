"""examples/mailbox_chat: two terminal clients talk through a real node, end to end
encrypted; the node's mailbox database holds their ciphertext and none of the plaintext."""

from __future__ import annotations

import os
import queue
import secrets
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ron.sdk import Client
from ron.sdk.e2e import PublicKey
from support.node import RunningNode, run_node

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "mailbox_chat" / "chat.py"


class Terminal:
    """A chat client process with its stdout read line by line on a thread."""

    def __init__(self, me: str, peer: str, keys: Path, node: str, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--me", me, "--peer", peer, "--keys", str(keys)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As a user next to the node: the SDK finds its owner token by itself.
            env={**os.environ, "RON_NODE_URL": node, "RON_DATA_DIR": str(data_dir)},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line starting {prefix!r}; saw {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def quit(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # Ctrl-D
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    (tmp_path / "node").mkdir()
    with run_node(tmp_path / "node") as n:
        yield n


def mailbox_files(node: RunningNode) -> bytes:
    files = sorted(node.data_dir.glob("mailbox.db*"))
    assert any(f.name == "mailbox.db" for f in files), files
    return b"".join(f.read_bytes() for f in files if f.is_file())


def test_two_chat_clients_talk_and_the_node_stores_only_ciphertext(
    node: RunningNode, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    secret_a = f"the vault code is {secrets.token_hex(8)}"
    secret_b = f"noted, meet at pier {secrets.token_hex(8)}"
    alice = Terminal("alice", "bob", keys, node.http, node.data_dir)
    bob = None
    try:
        alice.expect("* waiting for")  # bob has no key yet
        bob = Terminal("bob", "alice", keys, node.http, node.data_dir)
        alice.expect("* ready")
        bob.expect("* ready")
        alice.type(secret_a)
        assert bob.expect("<alice>") == f"<alice> {secret_a}"
        bob.type(secret_b)
        assert alice.expect("<bob>") == f"<bob> {secret_b}"
        alice.type("bye")
        assert bob.expect("<alice>") == "<alice> bye"
    finally:
        codes = [t.quit() for t in (alice, bob) if t is not None]
    assert codes == [0, 0], [alice.proc.stderr.read() if alice.proc.stderr else ""]

    # Keys on disk: private 0600, public shareable.
    for name in ("alice", "bob"):
        assert stat.S_IMODE((keys / f"{name}.key").stat().st_mode) == 0o600
    alice_pub = PublicKey.load(keys / "alice.pub").to_bytes()

    # Every message was acked (nothing left queued), and what the node's database (main
    # file and WAL) ever held of them is ciphertext: the sealed payloads name alice's
    # key in their header, but no plaintext is there.
    with Client(node.http, cap=node.token) as c:
        assert c.stats("chat.alice").depth == 0 and c.stats("chat.bob").depth == 0
        # A control message stored in the clear shows the scan does see payloads.
        control = f"control-plaintext-{secrets.token_hex(8)}"
        c.send("control", control.encode())
    stored = mailbox_files(node)
    assert control.encode() in stored
    assert alice_pub in stored
    for text in (secret_a, secret_b):
        assert text.encode() not in stored
        assert text.split()[-1].encode() not in stored  # not even the random part
