"""The console process: replay the cases, then serve the pages while the intake reads
``fraud-scores`` and a housekeeping thread finishes pending labels and expires old cases.

One replica only (see ``fraud_console.desk``): the book of cases lives in this process."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from fraud_console.auth import FormTokens, Passwords
from fraud_console.cases import CaseBook
from fraud_console.desk import ReviewDesk
from fraud_console.history import CardHistory
from fraud_console.intake import Intake
from fraud_console.journal import KafkaCaseLog, TransactionFinder, replay
from fraud_console.live import PrometheusReader
from fraud_console.web import Console, create_app
from fraudcore.http_limits import BodyLimit, limit_server
from fraudcore.kafka import ensure_topics
from fraudcore.settings import Settings

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 5.0


def housekeeping(desk: ReviewDesk, stop: threading.Event) -> None:
    while not stop.wait(HOUSEKEEPING_INTERVAL_S):
        try:
            desk.deliver_labels()
            desk.expire()
        except Exception:
            log.warning("housekeeping failed; trying again in %.0f s", HOUSEKEEPING_INTERVAL_S, exc_info=True)


def load_book(settings: Settings) -> CaseBook:
    started = time.monotonic()
    book = CaseBook()
    events = 0
    for event in replay(settings):
        book.apply(event)
        events += 1
    log.info(
        "replayed %d case events in %.1f s: %d waiting, %d awaiting their label",
        events,
        time.monotonic() - started,
        len(book.queue()),
        len(book.awaiting_label()),
    )
    return book


def serve(settings: Settings, group: str) -> None:
    config = settings.console
    ensure_topics(
        settings, [settings.topics.cases]
    )  # the platform creates it; a fresh stack may not have yet
    journal = KafkaCaseLog(settings)
    finder = TransactionFinder(settings)
    desk = ReviewDesk(
        load_book(settings),
        journal,
        claim_timeout_s=config.claim_timeout_s,
        case_expiry_s=config.case_expiry_s,
        max_open=config.queue_max_cases,
    )
    desk.deliver_labels()  # verdicts a crash left without their label
    intake = Intake(settings, desk, finder, group)
    history = CardHistory(settings)
    stop = threading.Event()
    threads = [
        threading.Thread(target=intake.run, args=(stop,), name="intake", daemon=True),
        threading.Thread(target=housekeeping, args=(desk, stop), name="housekeeping", daemon=True),
        threading.Thread(target=history.warm_up, name="feast-warm-up", daemon=True),
    ]
    for thread in threads:
        thread.start()

    def not_ready() -> str | None:
        return None if intake.assigned.is_set() else "waiting for the fraud-scores partitions"

    app = create_app(
        Console(
            settings,
            desk,
            PrometheusReader(settings),
            history,
            Passwords(config.users),
            FormTokens(),
            not_ready,
        )
    )
    limits = settings.http
    served = uvicorn.Config(
        BodyLimit(app, limits.max_body_bytes), port=config.port, access_log=False, log_level="info"
    )
    limit_server(served, config.host, limits)
    server = uvicorn.Server(served)
    try:
        server.run()  # until SIGTERM or SIGINT
    finally:
        stop.set()
        threads[0].join(timeout=15)
        journal.close()
        finder.close()
