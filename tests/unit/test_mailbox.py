"""The mailbox store: durability, deduplication, quotas, expiry, ownership."""

import pytest

from zentalk_relay.relay.mailbox import Limits, MailboxStore, PutResult

ALICE, BOB = b"A" * 32, b"B" * 32


def _id(n: int) -> bytes:
    return n.to_bytes(16, "big")


@pytest.fixture
def store(tmp_path):
    store = MailboxStore(tmp_path / "mailbox.sqlite3")
    yield store
    store.close()


def test_wal_mode_and_full_sync(store):
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # noqa: SLF001
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # noqa: SLF001 - FULL


def test_stored_messages_survive_a_reopen_in_order(tmp_path):
    first = MailboxStore(tmp_path / "m.db")
    assert first.put_many([(BOB, _id(i), b"m%d" % i) for i in range(3)], 100.0) == [PutResult.STORED] * 3
    first.close()
    again = MailboxStore(tmp_path / "m.db")
    page = again.fetch(BOB, 0, 10, 101.0)
    assert [m.body for m in page.messages] == [b"m0", b"m1", b"m2"]
    assert (again.depth, again.size, again.pending_for(BOB)) == (3, 6, 3)


def test_paging_with_cursor(store):
    store.put_many([(BOB, _id(i), b"x") for i in range(5)], 0.0)
    first = store.fetch(BOB, 0, 2, 1.0)
    assert len(first.messages) == 2 and first.has_more
    second = store.fetch(BOB, first.next_cursor, 10, 1.0)
    assert len(second.messages) == 3 and not second.has_more
    assert store.fetch(BOB, second.next_cursor, 10, 1.0).messages == ()


def test_only_the_owner_sees_its_messages(store):
    store.put_many([(BOB, _id(1), b"for bob")], 0.0)
    assert store.fetch(ALICE, 0, 10, 1.0).messages == ()
    assert store.acknowledge(ALICE, [_id(1)], 1.0) == 0
    assert store.depth == 1


def test_duplicates_are_stored_once_even_after_acknowledgement(store):
    assert store.put_many([(BOB, _id(1), b"x"), (BOB, _id(1), b"x")], 0.0) == [PutResult.STORED,
                                                                                 PutResult.DUPLICATE]
    assert store.acknowledge(BOB, [_id(1)], 1.0) == 1
    assert store.put_many([(BOB, _id(1), b"x")], 2.0) == [PutResult.DUPLICATE]
    assert store.fetch(BOB, 0, 10, 3.0).messages == ()
    assert store.stats.duplicates == 2 and store.stats.delivered == 1


def test_the_same_id_for_two_recipients_is_two_messages(store):
    assert store.put_many([(ALICE, _id(1), b"a"), (BOB, _id(1), b"b")], 0.0) == [PutResult.STORED] * 2


def test_quotas(tmp_path):
    store = MailboxStore(tmp_path / "q.db", Limits(per_recipient_messages=2, total_bytes=10, max_message_bytes=8))
    results = store.put_many([(BOB, _id(1), b"1234"), (BOB, _id(2), b"1234"), (BOB, _id(3), b"1"),
                              (ALICE, _id(4), b"12"), (ALICE, _id(5), b"123"), (ALICE, _id(6), b"x" * 9)], 0.0)
    assert results == [PutResult.STORED, PutResult.STORED, PutResult.RECIPIENT_FULL, PutResult.STORED,
                       PutResult.MAILBOX_FULL, PutResult.TOO_LARGE]
    assert store.stats.refused == {"recipient_full": 1, "mailbox_full": 1, "too_large": 1}
    store.acknowledge(BOB, [_id(1)], 1.0)
    assert store.put_many([(BOB, _id(7), b"1234")], 1.0) == [PutResult.STORED]


def test_expiry(tmp_path):
    store = MailboxStore(tmp_path / "t.db", Limits(ttl=600.0))
    store.put_many([(BOB, _id(1), b"old")], 10.0)
    store.put_many([(BOB, _id(2), b"new")], 70.0)
    # times are kept to the minute: the first expires at 600, the second at 660
    assert [m.body for m in store.fetch(BOB, 0, 10, 601.0).messages] == [b"new"]  # expired ones are not served
    assert store.purge(601.0) == 1
    assert store.depth == 1 and store.stats.expired == 1


def test_times_are_kept_to_the_minute(tmp_path):
    store = MailboxStore(tmp_path / "m.db", Limits())
    store.put_many([(BOB, _id(1), b"x")], 1767225642.75)
    (message,) = store.fetch(BOB, 0, 10, 1767225643.0).messages
    assert message.stored_at == 1767225600.0


def test_each_put_many_is_one_commit_counted_once(store):
    store.put_many([(BOB, _id(i), b"x") for i in range(5)], 100.0)
    store.put_many([(BOB, _id(9), b"y")], 101.0)
    assert (store.stats.commits, store.stats.stored) == (2, 6)
