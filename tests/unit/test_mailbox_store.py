"""The mailbox store on real SQLite files: leases, receipts, DLQ, idempotency, crash.

Time is a settable clock handed to the store, so lease expiry is tested without
sleeping; the crash test SIGKILLs a real process that holds the database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ron.proto.envelope import ErrorCode, RonError
from ron.services.mailbox.checkpoint import Checkpointer
from ron.services.mailbox.model import Delivery, Outgoing
from ron.services.mailbox.receipts import Receipt, parse_receipt
from ron.services.mailbox.store import MailboxStore

VIS = 30_000  # ms
MAXD = 3
WINDOW = 300_000


class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> MailboxStore:
    s = MailboxStore(tmp_path / "mailbox.db", clock=clock)
    yield s  # type: ignore[misc]
    s.close()


def send(store: MailboxStore, topic: str, *payloads: bytes, key: str | None = None) -> list[str]:
    results = store.send(
        topic, [Outgoing(p, idempotency_key=key) for p in payloads], dedup_window_ms=WINDOW
    )
    return [r.msg_id for r in results]


def recv(store: MailboxStore, topic: str, n: int = 10, vis: int = VIS) -> list[Delivery]:
    return store.receive(topic, n, vis, MAXD)[0]


def receipts(*deliveries: Delivery) -> list[Receipt]:
    return [parse_receipt(d.receipt) for d in deliveries]


# ---- send and receive -----------------------------------------------------------------


def test_fifo_per_topic_with_payload_and_headers_round_trip(store: MailboxStore) -> None:
    ids = send(store, "t", b"one", b"two", b"three")
    store.send("t", [Outgoing(b"\x00\xff four", {"k": "v"})], dedup_window_ms=WINDOW)
    send(store, "other", b"elsewhere")
    got = recv(store, "t", 2) + recv(store, "t", 10)
    assert [d.payload for d in got] == [b"one", b"two", b"three", b"\x00\xff four"]
    assert [d.msg_id for d in got[:3]] == ids
    assert got[3].headers == {"k": "v"}
    assert all(d.delivery_count == 1 and d.topic == "t" for d in got)
    assert recv(store, "t") == []
    assert [d.payload for d in recv(store, "other")] == [b"elsewhere"]


def test_msg_ids_are_ulids_and_receipts_name_one_lease(store: MailboxStore) -> None:
    from ulid import ULID

    (msg_id,) = send(store, "t", b"x")
    assert str(ULID.from_str(msg_id)) == msg_id
    (d,) = recv(store, "t")
    r = parse_receipt(d.receipt)
    assert (r.msg_id, r.lease) == (msg_id, 1)
    assert len(r.token) == 22


def test_a_leased_message_is_invisible_until_its_lease_expires(
    store: MailboxStore, clock: Clock
) -> None:
    send(store, "t", b"x")
    (first,) = recv(store, "t", vis=1000)
    clock.advance(999)
    assert recv(store, "t") == []
    clock.advance(1)
    (again,) = recv(store, "t")
    assert again.msg_id == first.msg_id
    assert again.delivery_count == 2
    assert again.receipt != first.receipt


# ---- ack ---------------------------------------------------------------------------------


def test_ack_removes_and_a_repeated_ack_is_harmless(store: MailboxStore) -> None:
    send(store, "t", b"a", b"b")
    got = recv(store, "t")
    settled, topics = store.ack(receipts(*got))
    assert (settled.done, settled.gone, topics) == (2, 0, {"t"})
    settled, _ = store.ack(receipts(*got))
    assert (settled.done, settled.gone) == (0, 2)
    assert store.count() == 0


def test_stale_receipt_is_refused_with_409_and_removes_nothing(
    store: MailboxStore, clock: Clock
) -> None:
    send(store, "t", b"x")
    (old,) = recv(store, "t", vis=1000)
    clock.advance(1000)
    (new,) = recv(store, "t")  # someone else holds it now
    with pytest.raises(RonError) as err:
        store.ack(receipts(old))
    assert err.value.code is ErrorCode.CONFLICT
    assert err.value.extra == {"stale": [0]}
    assert store.count() == 1
    settled, _ = store.ack(receipts(new))
    assert settled.done == 1


def test_ack_batch_is_all_or_nothing(store: MailboxStore, clock: Clock) -> None:
    send(store, "t", b"a", b"b")
    a, b = recv(store, "t", vis=1000)
    clock.advance(1000)
    recv(store, "t", 1)  # re-leases a only
    with pytest.raises(RonError) as err:
        store.ack(receipts(b, a))
    assert err.value.extra == {"stale": [1]}
    assert store.count() == 2  # b was not removed either


def test_ack_and_receive_settles_then_leases_in_one_commit(store: MailboxStore) -> None:
    send(store, "t", b"a", b"b", b"c")
    first = recv(store, "t", 2)
    settled, topics, got, _ = store.ack_and_receive(receipts(*first), "t", 2, VIS, MAXD)
    assert (settled.done, settled.gone, topics) == (2, 0, {"t"})
    assert [d.payload for d in got] == [b"c"]
    assert store.count() == 1  # a and b are gone, c is leased
    settled, _, got, _ = store.ack_and_receive(receipts(*first, *got), "t", 2, VIS, MAXD)
    assert (settled.done, settled.gone, got) == (1, 2, [])
    assert store.count() == 0


def test_ack_and_receive_with_a_stale_receipt_leases_nothing(
    store: MailboxStore, clock: Clock
) -> None:
    send(store, "t", b"x", b"y")
    (old,) = recv(store, "t", 1, vis=1000)
    clock.advance(1000)
    store.release_due("t", MAXD)
    (new,) = recv(store, "t", 1)  # x again, under a new lease
    with pytest.raises(RonError) as err:
        store.ack_and_receive(receipts(old), "t", 10, VIS, MAXD)
    assert err.value.code is ErrorCode.CONFLICT
    assert store.count() == 2
    (y,) = recv(store, "t")  # y was not leased by the refused call
    assert y.payload == b"y"
    settled, _ = store.ack(receipts(new, y))
    assert settled.done == 2


def test_ack_after_expiry_still_works_while_nobody_else_holds_it(
    store: MailboxStore, clock: Clock
) -> None:
    send(store, "t", b"x")
    (d,) = recv(store, "t", vis=1000)
    clock.advance(5000)
    store.release_due("t", MAXD)
    settled, _ = store.ack(receipts(d))
    assert settled.done == 1
    assert recv(store, "t") == []


def test_forged_token_is_stale_not_accepted(store: MailboxStore) -> None:
    send(store, "t", b"x")
    (d,) = recv(store, "t")
    real = parse_receipt(d.receipt)
    forged = Receipt(real.msg_id, real.lease, "A" * 22)
    with pytest.raises(RonError) as err:
        store.ack([forged])
    assert err.value.code is ErrorCode.CONFLICT
    never_leased = Receipt(real.msg_id, 0, real.token)
    with pytest.raises(RonError):
        store.ack([never_leased])
    assert store.count() == 1


# ---- nack, extend -----------------------------------------------------------------------


def test_nack_releases_now_or_after_a_delay(store: MailboxStore, clock: Clock) -> None:
    send(store, "t", b"a", b"b")
    a, b = recv(store, "t")
    settled, topics, dead = store.nack(receipts(a), 0, lambda t: MAXD)
    assert (settled.done, topics, dead) == (1, {"t"}, 0)
    (again,) = recv(store, "t")
    assert (again.msg_id, again.delivery_count) == (a.msg_id, 2)
    store.nack(receipts(b), 5000, lambda t: MAXD)
    assert recv(store, "t") == []
    assert store.next_due_ms("t") == clock.ms + 5000
    clock.advance(5000)
    (later,) = recv(store, "t")
    assert later.msg_id == b.msg_id


def test_nack_of_a_message_at_max_deliveries_dead_letters_it(
    store: MailboxStore, clock: Clock
) -> None:
    send(store, "t", b"x")
    for _ in range(MAXD - 1):
        (d,) = recv(store, "t")
        store.nack(receipts(d), 0, lambda t: MAXD)
    (last,) = recv(store, "t")
    assert last.delivery_count == MAXD
    _, _, dead = store.nack(receipts(last), 0, lambda t: MAXD)
    assert dead == 1
    assert recv(store, "t") == []
    assert store.stats("t", MAXD).dlq_depth == 1


def test_extend_pushes_the_deadline_but_not_after_expiry(store: MailboxStore, clock: Clock) -> None:
    send(store, "t", b"x")
    (d,) = recv(store, "t", vis=1000)
    clock.advance(900)
    assert store.extend(receipts(d), 10_000).done == 1
    clock.advance(5000)
    assert recv(store, "t") == []
    clock.advance(5000)
    with pytest.raises(RonError) as err:
        store.extend(receipts(d), 10_000)
    assert err.value.code is ErrorCode.CONFLICT


def test_live_leases(store: MailboxStore, clock: Clock) -> None:
    send(store, "t", b"a", b"b", b"c")
    a, b, c = recv(store, "t", vis=1000)
    store.ack(receipts(a))
    store.nack(receipts(b), 0, lambda t: MAXD)
    assert store.live_leases(receipts(a, b, c)) == [False, False, True]
    clock.advance(1000)
    assert store.live_leases(receipts(c)) == [False]


# ---- delete -----------------------------------------------------------------------------


def test_delete_by_id_anywhere_but_only_in_its_topic(store: MailboxStore) -> None:
    leased, queued = send(store, "t", b"a", b"b")
    recv(store, "t", 1)
    assert store.delete("other", queued) is False
    assert store.delete("t", leased) is True
    assert store.delete("t", leased) is False
    assert store.count() == 1


# ---- idempotency --------------------------------------------------------------------------


def test_idempotency_key_dedups_within_the_window_per_topic(
    store: MailboxStore, clock: Clock
) -> None:
    (first,) = send(store, "t", b"x", key="k1")
    clock.advance(WINDOW - 1)
    dup = store.send("t", [Outgoing(b"x", idempotency_key="k1")], dedup_window_ms=WINDOW)
    assert dup[0].msg_id == first and dup[0].duplicate
    assert store.count() == 1
    (elsewhere,) = send(store, "u", b"x", key="k1")
    assert elsewhere != first
    clock.advance(1)
    (after,) = send(store, "t", b"x", key="k1")
    assert after != first
    assert store.count() == 3


def test_duplicate_keys_inside_one_batch(store: MailboxStore) -> None:
    results = store.send(
        "t",
        [Outgoing(b"a", idempotency_key="k"), Outgoing(b"b", idempotency_key="k")],
        dedup_window_ms=WINDOW,
    )
    assert results[0].msg_id == results[1].msg_id
    assert [r.duplicate for r in results] == [False, True]
    assert [d.payload for d in recv(store, "t")] == [b"a"]


def test_expired_keys_are_purged(store: MailboxStore, clock: Clock) -> None:
    send(store, "t", b"x", key="k1")
    send(store, "t", b"y", key="k2")
    assert store.purge_dedup() == 0
    clock.advance(WINDOW)
    assert store.purge_dedup(batch=1) == 1
    assert store.purge_dedup() == 1


# ---- dead letters -------------------------------------------------------------------------


def test_dead_letter_after_max_deliveries_then_list_and_redrive(
    store: MailboxStore, clock: Clock
) -> None:
    poison, fine = send(store, "t", b"poison", b"fine")
    for n in range(1, MAXD + 1):
        got = recv(store, "t")
        assert [d.delivery_count for d in got if d.msg_id == poison] == [n]
        store.ack(receipts(*(d for d in got if d.msg_id == fine)))
        clock.advance(VIS)
        released = store.release_due("t", MAXD)
    assert (released.ready, released.dead) == (0, 1)
    assert recv(store, "t") == []
    letters, cursor = store.dead_letters("t", 10)
    assert cursor is None
    assert [(d.msg_id, d.payload, d.delivery_count, d.dead_ms) for d in letters] == [
        (poison, b"poison", MAXD, clock.ms)
    ]
    assert store.redrive("t", None, 10) == 1
    assert store.stats("t", MAXD).dlq_depth == 0
    (back,) = recv(store, "t")
    assert (back.msg_id, back.delivery_count) == (poison, 1)


def test_dead_letter_paging_and_redrive_by_id(store: MailboxStore, clock: Clock) -> None:
    ids = send(store, "t", *(bytes([i]) for i in range(5)))
    for _ in range(MAXD):
        recv(store, "t")
        clock.advance(VIS)
        store.release_due("t", MAXD)
    page1, cursor = store.dead_letters("t", 2)
    assert cursor is not None
    page2, cursor2 = store.dead_letters("t", 2, int(cursor))
    page3, cursor3 = store.dead_letters("t", 2, int(cursor2 or 0))
    assert [d.msg_id for d in page1 + page2 + page3] == ids
    assert cursor3 is None
    assert store.redrive("t", [ids[3], ids[3], "01ARZ3NDEKTSV4RRFFQ69G5FAV"], 100) == 1
    assert [d.msg_id for d in recv(store, "t")] == [ids[3]]
    assert store.redrive("other", None, 100) == 0


# ---- stats and timers ---------------------------------------------------------------------


def test_stats_and_totals(store: MailboxStore, clock: Clock) -> None:
    send(store, "t", b"a", b"b", b"c", b"d")
    clock.advance(2000)
    _a, b = recv(store, "t", 2, vis=1000)
    store.nack(receipts(b), 10_000, lambda t: MAXD)
    s = store.stats("t", MAXD)
    assert (s.depth, s.in_flight, s.delayed, s.dlq_depth) == (2, 1, 1, 0)
    assert s.oldest_age_s == pytest.approx(2.0)
    clock.advance(1000)  # a's lease is due: it counts as visible again
    s = store.stats("t", MAXD)
    assert (s.depth, s.in_flight, s.delayed) == (3, 0, 1)
    t = store.totals()
    assert (t.ready, t.in_flight, t.delayed, t.dead) == (3, 0, 1, 0)
    assert store.stats("empty", MAXD).oldest_age_s == 0.0


def test_next_due_and_pending_due(store: MailboxStore, clock: Clock) -> None:
    assert store.next_due_ms("t") is None
    send(store, "t", b"a", b"b")
    send(store, "u", b"c")
    _a, b = recv(store, "t", vis=5000)
    recv(store, "u", vis=2000)
    store.nack(receipts(b), 1000, lambda t: MAXD)
    assert store.next_due_ms("t") == clock.ms + 1000
    assert sorted(store.pending_due()) == [("t", clock.ms + 1000), ("u", clock.ms + 2000)]
    clock.advance(1000)
    released = store.release_due("t", MAXD)
    assert (released.ready, released.dead) == (1, 0)
    assert store.next_due_ms("t") == clock.ms + 4000


# ---- durability and ownership -------------------------------------------------------------


def test_state_survives_reopening(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "mailbox.db"
    s = MailboxStore(path, clock=clock)
    send(s, "t", b"a", b"b", key=None)
    (held,) = recv(s, "t", 1)
    s.close()
    s = MailboxStore(path, clock=clock)
    try:
        assert [d.payload for d in recv(s, "t")] == [b"b"]  # a is still leased
        assert s.ack(receipts(held))[0].done == 1
    finally:
        s.close()


def test_a_committed_send_survives_sigkill_of_its_process(tmp_path: Path) -> None:
    path = tmp_path / "mailbox.db"
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from ron.services.mailbox.model import Outgoing
        from ron.services.mailbox.store import MailboxStore
        s = MailboxStore(Path({str(path)!r}))
        ids = [r.msg_id for r in s.send("t", [Outgoing(b"p%d" % i) for i in range(50)],
                                        dedup_window_ms=1000)]
        got, _ = s.receive("t", 10, 60_000, 5)
        from ron.services.mailbox.receipts import parse_receipt
        s.ack([parse_receipt(d.receipt) for d in got[:5]])
        print(" ".join(ids), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ids = proc.stdout.split()
    assert len(ids) == 50
    s = MailboxStore(path)
    try:
        assert s.count() == 45
        stats = s.stats("t", 5)
        assert (stats.depth, stats.in_flight) == (40, 5)
    finally:
        s.close()


def test_one_owner_per_database(tmp_path: Path) -> None:
    path = tmp_path / "mailbox.db"
    first = MailboxStore(path)
    try:
        with pytest.raises(RonError) as err:
            MailboxStore(path)
        assert err.value.code is ErrorCode.UNAVAILABLE
        with pytest.raises(RonError):
            MailboxStore(path, shared=True)
        with pytest.raises(ValueError):
            MailboxStore(path, owner=False)  # an attached store is always shared
    finally:
        first.close()
    MailboxStore(path).close()  # released with its owner


def test_a_shared_file_has_writers_in_several_stores(tmp_path: Path, clock: Clock) -> None:
    """The owner and attached stores (each would be its own process) share one queue:
    seqs stay unique and in order, and what one wrote the others lease and settle."""
    path = tmp_path / "mailbox.db"
    owner = MailboxStore(path, shared=True, clock=clock)
    a = MailboxStore(path, shared=True, owner=False, clock=clock)
    b = MailboxStore(path, shared=True, owner=False, clock=clock)
    try:
        ids = send(a, "t", b"1", b"2") + send(b, "t", b"3") + send(owner, "t", b"4")
        ids += send(a, "t", b"5")
        got = recv(b, "t", 10)
        assert [d.payload for d in got] == [b"1", b"2", b"3", b"4", b"5"]
        assert [d.msg_id for d in got] == ids
        assert a.ack([parse_receipt(d.receipt) for d in got[:2]])[0].done == 2
        clock.advance(VIS + 1)  # b's other leases expire; the owner leases one again
        again = recv(owner, "t", 1)
        assert again[0].payload == b"3"
        with pytest.raises(RonError) as err:  # so the receipt b was given is stale
            b.ack([parse_receipt(got[2].receipt)])
        assert err.value.code is ErrorCode.CONFLICT
        assert owner.stats("t", MAXD).in_flight == 1
        # The same idempotency key seen by another writer is a duplicate there too.
        first = a.send("t", [Outgoing(b"k", idempotency_key="key")], dedup_window_ms=WINDOW)
        second = b.send("t", [Outgoing(b"k", idempotency_key="key")], dedup_window_ms=WINDOW)
        assert second[0].duplicate and second[0].msg_id == first[0].msg_id
    finally:
        for s in (a, b, owner):
            s.close()


def test_writers_of_a_shared_file_take_turns_across_processes(tmp_path: Path) -> None:
    """Two processes send at once into one file: every send lands, each seq once."""
    path = tmp_path / "mailbox.db"
    owner = MailboxStore(path, shared=True)
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from ron.services.mailbox.model import Outgoing
        from ron.services.mailbox.store import MailboxStore
        s = MailboxStore(Path({str(path)!r}), shared=True, owner=False)
        for i in range(200):
            s.send("t", [Outgoing(b"x") for _ in range(5)], dedup_window_ms=1000)
        s.close()
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    try:
        for _ in range(100):
            send(owner, "t", b"o")
    finally:
        assert all(p.wait(60) == 0 for p in procs)
    try:
        assert owner.count() == 2 * 200 * 5 + 100
        got = owner.receive("t", 100, VIS, MAXD)[0]
        assert len(got) == 100
    finally:
        owner.close()


def test_memory_only_store_writes_nothing(tmp_path: Path, clock: Clock) -> None:
    before = set(os.listdir(tmp_path))
    s = MailboxStore(None, clock=clock)
    send(s, "t", b"x")
    assert [d.payload for d in recv(s, "t")] == [b"x"]
    s.close()
    assert set(os.listdir(tmp_path)) == before


def test_the_owner_checkpoints_a_shared_file_so_its_wal_starts_over(tmp_path: Path) -> None:
    """Writers append; the checkpoint copies everything back and the next writer
    starts the WAL from its beginning, so the file stops growing."""
    path = tmp_path / "mailbox.db"
    writer = MailboxStore(path, shared=True, owner=False)
    checkpointer = Checkpointer(
        path, tmp_path / "mailbox.db.wlock", synchronous="normal", every_s=3600
    )
    wal = tmp_path / "mailbox.db-wal"

    def churn() -> None:
        for _ in range(40):
            send(writer, "t", *[os.urandom(1024)] * 10)
            got = recv(writer, "t", 10)
            writer.ack([parse_receipt(d.receipt) for d in got])

    try:
        churn()
        grown = wal.stat().st_size
        checkpointer.checkpoint()
        assert (checkpointer.passes, checkpointer.locked_passes) == (1, 1)
        checkpointer.checkpoint()  # nothing written since: nothing to do
        assert checkpointer.passes == 1
        churn()
        assert wal.stat().st_size <= grown  # written over from the start, not appended
        send(writer, "t", b"kept")
        checkpointer.checkpoint()
    finally:
        checkpointer.close()
        writer.close()
    owner = MailboxStore(path)
    try:
        assert [d.payload for d in recv(owner, "t")] == [b"kept"]
    finally:
        owner.close()


def test_only_the_owner_of_a_shared_file_runs_a_checkpointer(tmp_path: Path) -> None:
    shared = MailboxStore(tmp_path / "a.db", shared=True)
    attached = MailboxStore(tmp_path / "a.db", shared=True, owner=False)
    alone = MailboxStore(tmp_path / "b.db")
    try:
        assert shared._checkpointer is not None
        assert attached._checkpointer is None and alone._checkpointer is None
    finally:
        for s in (attached, shared, alone):
            s.close()


def test_work_says_whether_a_receive_could_lease(store: MailboxStore, clock: Clock) -> None:
    send(store, "t", b"a")
    assert store.work("t") == (True, False) and store.work("other") == (False, False)
    assert len(recv(store, "t", 1, vis=1000)) == 1
    assert store.work("t") == (False, False)  # leased, not yet due
    clock.advance(1001)
    assert store.work("t") == (False, True)  # its lease ended: release, then take it
    (again,) = recv(store, "t", 1)
    store.nack([parse_receipt(again.receipt)], 5000, lambda _: MAXD)
    assert store.work("t") == (False, False)  # delayed
    clock.advance(5001)
    assert store.work("t") == (False, True)


def test_work_tells_ready_from_due(store: MailboxStore, clock: Clock) -> None:
    assert store.work("t") == (False, False)
    send(store, "t", b"a")
    send(store, "t", b"b")
    assert store.work("t") == (True, False)
    assert len(recv(store, "t", 1, vis=1000)) == 1
    assert store.work("t") == (True, False)  # "b" waits; "a" is leased, not yet due
    clock.advance(1001)
    assert store.work("t") == (True, True)  # a receive must release "a" first
    # Without the release a receive takes only what is ready; "a" stays due.
    got, released = store.receive("t", 10, 30_000, MAXD, release=False)
    assert [d.payload for d in got] == [b"b"] and released.ready == 0
    assert store.work("t") == (False, True)
    got, released = store.receive("t", 10, 30_000, MAXD)
    assert [d.payload for d in got] == [b"a"] and released.ready == 1
    assert store.work("t") == (False, False)


def test_a_stale_receipt_in_an_ack_deletes_nothing(store: MailboxStore, clock: Clock) -> None:
    send(store, "t", b"a")
    send(store, "t", b"b")
    first = recv(store, "t", 2, vis=1000)
    clock.advance(1001)
    again = recv(store, "t", 1)  # "a" leased again: its first receipt is stale
    receipts = [parse_receipt(first[1].receipt), parse_receipt(first[0].receipt)]
    with pytest.raises(RonError) as caught:
        store.ack(receipts)
    assert caught.value.code is ErrorCode.CONFLICT
    # "b" (valid receipt, earlier in the call) was not removed: all or nothing.
    settled, _ = store.ack([parse_receipt(first[1].receipt), parse_receipt(again[0].receipt)])
    assert settled.done == 2 and settled.gone == 0
