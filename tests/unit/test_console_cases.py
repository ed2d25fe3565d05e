"""The review console's cases: the state machine, claims and their timeout, one verdict and
one label per case (double submissions, crashes between the writes), replay from the events."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from fraud_console.cases import (
    CaseBook,
    CaseConflictError,
    CaseEvent,
    EventKind,
    Status,
    UnknownCaseError,
    case_id_of,
)
from fraud_console.desk import ReviewDesk
from fraud_console.intake import opens_case, sampled
from fraudcore.events import EventKind as ContractKind
from fraudcore.events import format_timestamp, validate
from tests.console_helpers import T0, Clock, MemoryLog, decision, transaction

CLAIM_S = 600.0
SEEN = {"score": 0.62, "card_now": None}


def make_desk(
    log: MemoryLog | None = None, clock: Clock | None = None, book: CaseBook | None = None
) -> ReviewDesk:
    return ReviewDesk(
        book if book is not None else CaseBook(),
        log or MemoryLog(),
        claim_timeout_s=CLAIM_S,
        case_expiry_s=7 * 86_400,
        clock=clock or Clock(),
    )


def opened(desk: ReviewDesk, n: int = 1, **overrides: object) -> str:
    tx = transaction(n)
    assert desk.open(decision(tx, **overrides), tx)  # type: ignore[arg-type]
    return case_id_of(tx["transaction_id"])


# --------------------------------------------------------------------------- opening
def test_a_decision_opens_one_case_however_often_it_is_read() -> None:
    log = MemoryLog()
    desk = make_desk(log)
    tx = transaction(1)
    assert desk.open(decision(tx), tx)
    assert not desk.open(decision(tx), tx)  # redelivered
    assert not desk.open(decision(tx, model_version="v-other", decision_id="d-2"), tx)  # rescored
    assert [c.case_id for c in desk.queue()] == [case_id_of(tx["transaction_id"])]
    assert len(log.records) == 1


def test_the_queue_puts_the_riskiest_first_and_leaves_decided_cases_out() -> None:
    desk = make_desk()
    low, high, mid = opened(desk, 1, score=0.55), opened(desk, 2, score=0.97), opened(desk, 3, score=0.7)
    assert [c.case_id for c in desk.queue()] == [high, mid, low]
    desk.claim(mid, "alice")
    desk.decide(mid, "alice", True, "", SEEN)
    assert [c.case_id for c in desk.queue()] == [high, low]
    assert [c.case_id for c in desk.decided()] == [mid]


def test_which_decisions_open_cases() -> None:
    tx = transaction(1)
    assert opens_case(decision(tx, "review"), 0.0)
    assert not opens_case(decision(tx, "approve"), 1.0)
    assert opens_case(decision(tx, "decline"), 1.0)
    assert not opens_case(decision(tx, "decline"), 0.0)
    ids = [f"tx-{i}" for i in range(20_000)]
    share = sum(sampled(i, 0.1) for i in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert [sampled(i, 0.1) for i in ids[:200]] == [sampled(i, 0.1) for i in ids[:200]]  # no randomness
    assert {i for i in ids if sampled(i, 0.05)} <= {i for i in ids if sampled(i, 0.1)}  # a larger share adds


# --------------------------------------------------------------------------- claims
def test_a_claimed_case_is_held_until_its_claim_times_out() -> None:
    clock = Clock()
    desk = make_desk(clock=clock)
    case_id = opened(desk)
    desk.claim(case_id, "alice")
    with pytest.raises(CaseConflictError, match="alice has claimed"):
        desk.claim(case_id, "bob")
    with pytest.raises(CaseConflictError):
        desk.decide(case_id, "bob", True, "", SEEN)
    clock.advance(CLAIM_S - 1)
    with pytest.raises(CaseConflictError):
        desk.claim(case_id, "bob")
    clock.advance(2)
    claimed = desk.claim(case_id, "bob")
    assert (claimed.claimant, claimed.status) == ("bob", Status.CLAIMED)
    assert claimed.claimed_until == format_timestamp(clock.at + timedelta(seconds=CLAIM_S))
    with pytest.raises(CaseConflictError, match="claim the case"):
        desk.decide(case_id, "alice", True, "", SEEN)  # her claim was taken over


def test_a_claimant_past_the_timeout_may_still_decide_while_nobody_else_claimed() -> None:
    clock = Clock()
    desk = make_desk(clock=clock)
    case_id = opened(desk)
    desk.claim(case_id, "alice")
    clock.advance(CLAIM_S * 3)
    assert desk.decide(case_id, "alice", False, "", SEEN).status is Status.CLOSED


def test_only_the_claimant_releases_and_a_released_case_is_open_again() -> None:
    desk = make_desk()
    case_id = opened(desk)
    with pytest.raises(CaseConflictError):
        desk.release(case_id, "alice")  # nobody holds it
    desk.claim(case_id, "alice")
    with pytest.raises(CaseConflictError):
        desk.release(case_id, "bob")
    released = desk.release(case_id, "alice")
    assert (released.status, released.claimant) == (Status.OPEN, None)
    assert desk.claim(case_id, "bob").claimant == "bob"


def test_concurrent_claims_leave_one_holder() -> None:
    desk = make_desk()
    case_id = opened(desk)
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def claim(analyst: str) -> None:
        barrier.wait()
        try:
            desk.claim(case_id, analyst)
            winners.append(analyst)
        except CaseConflictError:
            pass

    threads = [threading.Thread(target=claim, args=(f"analyst{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert desk.case(case_id).claimant == winners[0]


def test_unknown_cases_are_reported_as_such() -> None:
    desk = make_desk()
    with pytest.raises(UnknownCaseError):
        desk.claim("no-such-case", "alice")
    with pytest.raises(UnknownCaseError):
        desk.case("no-such-case")


# --------------------------------------------------------------------------- verdicts
def test_a_verdict_is_recorded_once_and_its_label_published_once() -> None:
    log = MemoryLog()
    clock = Clock()
    desk = make_desk(log, clock)
    case_id = opened(desk)
    desk.claim(case_id, "alice")
    clock.advance(30)
    case = desk.decide(case_id, "alice", True, "card used at two terminals 3 km apart", SEEN)
    assert case.status is Status.CLOSED
    assert case.label_position == "0:0"
    assert case.verdict is not None
    assert (case.verdict.analyst, case.verdict.is_fraud, case.verdict.seen) == ("alice", True, SEEN)
    assert case.verdict.decided_at == format_timestamp(clock.at)
    for second in (
        lambda: desk.decide(case_id, "alice", False, "", SEEN),
        lambda: desk.claim(case_id, "bob"),
    ):
        with pytest.raises(CaseConflictError, match="closed: alice recorded fraud"):
            second()
    assert len(log.labels) == 1
    kinds = [CaseEvent.from_record(k, v).kind for k, v in log.records]
    assert kinds == [EventKind.OPENED, EventKind.CLAIMED, EventKind.CLOSED, EventKind.LABELLED]


def test_simultaneous_submissions_record_one_verdict() -> None:
    log = MemoryLog()
    desk = make_desk(log)
    case_id = opened(desk)
    desk.claim(case_id, "alice")
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def submit(is_fraud: bool) -> None:
        barrier.wait()
        try:
            desk.decide(case_id, "alice", is_fraud, "", SEEN)
            outcomes.append("recorded")
        except CaseConflictError:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["recorded"] + ["refused"] * 5
    assert len(log.labels) == 1
    closed = [k for k, v in log.records if CaseEvent.from_record(k, v).kind is EventKind.CLOSED]
    assert len(closed) == 1


def test_the_label_carries_the_verdict_as_the_contract_says() -> None:
    log = MemoryLog()
    clock = Clock()
    desk = make_desk(log, clock)
    tx = transaction(7)
    desk.open(decision(tx), tx)
    case_id = case_id_of(tx["transaction_id"])
    desk.claim(case_id, "bob")
    clock.advance(90)
    desk.decide(case_id, "bob", False, "customer confirmed the purchase", SEEN)
    [(labelled_case, label)] = log.labels
    assert labelled_case == case_id
    assert validate(ContractKind.FRAUD_LABEL, label).ok, validate(ContractKind.FRAUD_LABEL, label).reason
    assert label["source"] == "analyst"
    assert label["analyst"] == "bob"
    assert label["is_fraud"] is False
    assert (label["transaction_id"], label["card_id"], label["terminal_id"]) == (
        tx["transaction_id"],
        tx["card_id"],
        tx["terminal_id"],
    )
    assert label["reported_at"] == format_timestamp(T0 + timedelta(seconds=90))
    assert "note" not in label
    assert "customer" not in str(label)


def test_a_verdict_whose_write_fails_is_not_recorded() -> None:
    log = MemoryLog()
    desk = make_desk(log)
    case_id = opened(desk)
    desk.claim(case_id, "alice")
    log.fail_writes_of = {EventKind.CLOSED}
    with pytest.raises(ConnectionError):
        desk.decide(case_id, "alice", True, "", SEEN)
    assert desk.case(case_id).status is Status.CLAIMED
    assert log.labels == []
    log.fail_writes_of = set()
    assert desk.decide(case_id, "alice", True, "", SEEN).label_position == "0:0"


def test_a_label_that_could_not_be_published_follows_once_the_broker_is_back() -> None:
    log = MemoryLog()
    desk = make_desk(log)
    case_id = opened(desk)
    desk.claim(case_id, "alice")
    log.publish_failures = 2
    case = desk.decide(case_id, "alice", True, "", SEEN)  # recorded; the label waits
    assert (case.status, case.label_position) == (Status.CLOSED, None)
    assert desk.deliver_labels() == 0  # still failing
    assert desk.deliver_labels() == 1
    assert desk.deliver_labels() == 0  # nothing left
    assert len(log.labels) == 1
    assert desk.case(case_id).label_position == "0:0"


def test_a_publication_that_landed_despite_its_error_is_not_repeated() -> None:
    log = MemoryLog()
    desk = make_desk(log)
    case_id = opened(desk)
    desk.claim(case_id, "alice")
    log.publish_failures, log.land_failed_publications = 1, True  # acknowledged too late
    desk.decide(case_id, "alice", True, "", SEEN)
    assert desk.deliver_labels() == 1
    assert len(log.labels) == 1
    assert log.searches == 1
    assert desk.case(case_id).label_position == "0:0"


@pytest.mark.parametrize("crash_before", [EventKind.LABELLED, "publication"])
def test_a_restart_after_a_crash_mid_verdict_publishes_the_label_exactly_once(
    crash_before: EventKind | str,
) -> None:
    """The process dies after the verdict is durable: before its label was published, or
    after (but before the ``labelled`` event). The restarted console replays the cases topic
    and finishes the job without a second label."""
    log = MemoryLog()
    desk = make_desk(log)
    case_id = opened(desk)
    desk.claim(case_id, "alice")
    if crash_before == "publication":
        log.publish_failures = 1
    else:
        log.fail_writes_of = {EventKind.LABELLED}
    desk.decide(case_id, "alice", True, "", SEEN)
    assert len(log.labels) == (0 if crash_before == "publication" else 1)

    log.fail_writes_of, log.publish_failures = set(), 0
    restarted = make_desk(log, book=log.replayed())
    assert restarted.case(case_id).status is Status.CLOSED
    assert restarted.deliver_labels() == 1
    assert len(log.labels) == 1
    assert restarted.case(case_id).label_position == "0:0"
    assert make_desk(log, book=log.replayed()).deliver_labels() == 0  # and after yet another restart


# --------------------------------------------------------------------------- replay
def test_replaying_the_events_rebuilds_the_book() -> None:
    log = MemoryLog()
    clock = Clock()
    desk = make_desk(log, clock)
    waiting, claimed, decided = opened(desk, 1), opened(desk, 2), opened(desk, 3)
    desk.claim(claimed, "bob")
    desk.claim(decided, "alice")
    desk.decide(decided, "alice", False, "known customer", SEEN)

    book = log.replayed()
    assert book.cases == desk.book.cases
    assert [c.case_id for c in book.queue()] == [c.case_id for c in desk.queue()]
    assert book.get(claimed).claimant == "bob"
    closed = book.get(decided)
    assert closed.verdict is not None
    assert (closed.verdict.note, closed.verdict.seen, closed.label_position) == (
        "known customer",
        SEEN,
        "0:0",
    )
    assert waiting in book
    with pytest.raises(CaseConflictError):  # the restarted console refuses a second verdict
        make_desk(log, clock, book).decide(decided, "alice", True, "", SEEN)


def test_only_the_latest_event_of_each_case_matters_as_after_compaction() -> None:
    log = MemoryLog()
    desk = make_desk(log)
    case_id = opened(desk)
    desk.claim(case_id, "alice")
    desk.release(case_id, "alice")
    desk.claim(case_id, "bob")
    latest = {}
    for key, value in log.records:
        latest[key] = value
    compacted = MemoryLog()
    compacted.records = list(latest.items())
    assert compacted.replayed().cases == log.replayed().cases


def test_unclaimed_cases_expire_with_a_tombstone() -> None:
    log = MemoryLog()
    clock = Clock()
    desk = ReviewDesk(CaseBook(), log, claim_timeout_s=CLAIM_S, case_expiry_s=3_600, clock=clock)
    old, held = opened(desk, 1), opened(desk, 2)
    desk.claim(held, "alice")
    clock.advance(1_800)
    fresh = opened(desk, 3)
    clock.advance(1_801)
    assert desk.expire() == 1
    assert {c.case_id for c in desk.queue()} == {held, fresh}
    assert log.records[-1] == (old.encode(), None)
    assert {c.case_id for c in log.replayed().queue()} == {held, fresh}


def test_a_full_queue_drops_its_lowest_scored_unclaimed_cases() -> None:
    log = MemoryLog()
    desk = ReviewDesk(
        CaseBook(), log, claim_timeout_s=CLAIM_S, case_expiry_s=3_600, max_open=2, clock=Clock()
    )
    low = opened(desk, 1, score=0.55)
    desk.claim(low, "alice")  # claimed: never dropped, and not counted against the limit
    mid, high = opened(desk, 2, score=0.6), opened(desk, 3, score=0.9)
    assert {c.case_id for c in desk.queue()} == {low, mid, high}
    higher = opened(desk, 4, score=0.8)
    assert {c.case_id for c in desk.queue()} == {low, high, higher}
    assert log.records[-1] == (mid.encode(), None)  # a tombstone, as for an expired case
    assert desk.open(decision(transaction(5), score=0.51), transaction(5))
    assert {c.case_id for c in desk.queue()} == {low, high, higher}  # the newcomer was the lowest
    assert {c.case_id for c in log.replayed().queue()} == {low, high, higher}


def test_memory_keeps_the_latest_decisions_and_every_unlabelled_one() -> None:
    log = MemoryLog()
    desk = ReviewDesk(
        CaseBook(recent_closed=3), log, claim_timeout_s=CLAIM_S, case_expiry_s=86_400, clock=Clock()
    )
    ids = [opened(desk, n) for n in range(1, 7)]
    log.publish_failures = 1
    for case_id in ids:
        desk.claim(case_id, "alice")
        desk.decide(case_id, "alice", True, "", SEEN)
    # The first one's label failed: it stays, and with it those decided after it.
    assert ids[0] in desk.book.cases
    desk.deliver_labels()
    desk.claim(opened(desk, 7), "alice")
    desk.decide(case_id_of("tx-console-7"), "alice", True, "", SEEN)
    assert len([c for c in desk.book.cases.values() if c.status is Status.CLOSED]) == 3
    with pytest.raises(CaseConflictError, match="closed"):  # forgotten in memory, still refused
        desk.decide(ids[0], "alice", False, "", SEEN)


def test_case_events_round_trip_through_their_records() -> None:
    desk = make_desk()
    case_id = opened(desk)
    case = desk.claim(case_id, "alice")
    event = CaseEvent(EventKind.CLAIMED, case_id, format_timestamp(T0), "alice", case)
    assert CaseEvent.from_record(event.key(), event.value()) == event
    tombstone = CaseEvent.from_record(case_id.encode(), None)
    assert (tombstone.kind, tombstone.case) == (EventKind.EXPIRED, None)
