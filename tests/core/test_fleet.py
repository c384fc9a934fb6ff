"""Fleet bookkeeping (qasino.core.fleet): missed generations, keep-stale carry
and drop, persist TTL, driven by explicit times and generation sequence numbers."""

from __future__ import annotations

from qasino.core.fleet import (
    Contribution,
    identity_counts,
    identity_rows,
    is_stale,
    keep_stale_age,
    keep_stale_expired,
    persist_expired,
    seen,
    table_identity_rows,
)

T0 = 1_700_000_000.0


def test_first_publish_starts_the_record_and_later_ones_move_last_seen() -> None:
    rec = seen(None, "web1", T0, seq=3, generation_number=1000, remote_addr="10.0.0.1")
    assert (rec.first_seen_epoch, rec.last_seen_epoch, rec.last_seq) == (T0, T0, 3)
    rec = seen(rec, "web1", T0 + 40, seq=5, generation_number=1060)
    assert (rec.first_seen_epoch, rec.last_seen_epoch) == (T0, T0 + 40)
    assert (rec.last_seq, rec.last_generation_number) == (5, 1060)
    assert rec.remote_addr == "10.0.0.1"  # an unknown address keeps the known one
    assert seen(rec, "web1", T0 + 50, 5, 1060, "10.0.0.2").remote_addr == "10.0.0.2"


def test_missed_generations_count_whole_generations_since_the_last_publish() -> None:
    rec = seen(None, "web1", T0, seq=10, generation_number=1000)
    rows = [identity_rows({"web1": rec}, [], seq)[0] for seq in (10, 11, 14)]
    assert [(r[4], r[8]) for r in rows] == [(0, 0), (1, 1), (4, 1)]
    assert not is_stale(10, 10) and is_stale(10, 11)


def test_keep_stale_carries_for_n_generations_with_age_counting_up_then_drops() -> None:
    ages = [keep_stale_age(last_seq=7, seq=s, keep_stale=3) for s in range(7, 13)]
    assert ages == [None, 1, 2, 3, None, None]
    assert [keep_stale_expired(7, s, 3) for s in (9, 10, 11)] == [False, False, True]


def test_keep_stale_zero_never_carries_the_original_behaviour() -> None:
    assert keep_stale_age(7, 8, 0) is None
    assert keep_stale_expired(7, 8, 0)


def test_persist_ttl_drops_a_copy_not_republished_for_n_generations() -> None:
    assert [persist_expired(4, s, 2) for s in (5, 6, 7)] == [False, False, True]


def test_persist_ttl_zero_keeps_a_copy_forever() -> None:
    assert not persist_expired(4, 10_000, 0)


def test_identity_rows_count_tables_and_rows_in_this_snapshot_carried_included() -> None:
    idents = {
        "a": seen(None, "a", T0, 5, 1000, "1.2.3.4"),
        "b": seen(None, "b", T0 - 60, 3, 940),
    }
    contribs = [
        Contribution("cpu", "a", 2, 0),
        Contribution("CPU", "a", 1, 0),
        Contribution("disk", "a", 4, 0),
        Contribution("cpu", "b", 7, 2),
    ]
    assert identity_rows(idents, contribs, seq=5) == [
        ("a", T0, T0, 1000, 0, 2, 7, "1.2.3.4", 0),
        ("b", T0 - 60, T0 - 60, 940, 2, 1, 7, None, 1),
    ]
    assert table_identity_rows(contribs) == [
        ("cpu", "a", 3, 0),
        ("cpu", "b", 7, 2),
        ("disk", "a", 4, 0),
    ]
    assert identity_counts(idents, 5) == {"live": 1, "stale": 1}


def test_identity_fragments_cost_a_few_hundred_bytes_per_identity() -> None:
    """They are kept for the server's life: a fleet that churns through
    100,000 identities must not cost hundreds of MB (orjson's results
    each held a ~4 KiB buffer)."""
    import tracemalloc

    from qasino.core.fleet import IdentityFragments, IdentitySeen

    identities = {
        f"host-{i}": IdentitySeen(f"host-{i}", 1000.0 + i, 1000.5 + i, 0, 1000, "10.0.0.1")
        for i in range(20_000)
    }
    fragments = IdentityFragments()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        encoded = fragments.update(identities, identities, [])
        del encoded
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 20_000 * 300, kept
