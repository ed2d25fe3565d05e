"""The review console in a real browser: Debian's headless Chromium driven by Selenium, the
console as a real process on its own topics, consumer group and ports, against the running
stack's Kafka and Prometheus.

An analyst signs in, watches the live page refresh, finds the case a `review` decision
opened, claims it and records a verdict; the label arrives on fraud-labels with the
analyst's name (the time from the click to its arrival is printed). A replayed and a forged
form post are refused and write nothing. Screenshots of each page go to
local_outputs/console-screenshots/."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from fraud_app.supervisor import Component
from fraud_console.auth import hash_password
from fraud_console.cases import CaseEvent, EventKind, case_id_of
from fraudcore.events import EventKind as ContractKind
from fraudcore.events import format_timestamp, validate
from fraudcore.kafka import admin, broker_ready, consumer, producer
from fraudcore.settings import Settings
from tests.console_helpers import decision, transaction
from tests.helpers import CREATED_TOPICS, env_for, isolated
from tests.serving_helpers import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "local_outputs" / "console-screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ANALYST, PASSWORD = "ada.analyst", "a long test passphrase"
NOTE = "Card used at a terminal it never visited, 3 minutes after a local purchase."


@dataclass
class LabelWatch:
    """fraud-labels, read from before the verdict on: each record with when it arrived."""

    settings: Settings
    arrived: list[tuple[float, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        cons = consumer(self.settings, None, self.settings.topics.labels.name)
        try:
            while not self.stop.is_set():
                for records in cons.poll(timeout_ms=20).values():
                    now = time.monotonic()
                    self.arrived += [(now, r) for r in records]
        finally:
            cons.close()

    def wait_for(self, transaction_id: str, timeout_s: float = 30) -> tuple[float, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for at, record in list(self.arrived):
                if orjson.loads(record.value)["transaction_id"] == transaction_id:
                    return at, record
            time.sleep(0.01)
        raise AssertionError(f"no label for {transaction_id} on {self.settings.topics.labels.name}")

    def of(self, transaction_id: str) -> list[Any]:
        return [r for _, r in self.arrived if orjson.loads(r.value)["transaction_id"] == transaction_id]


@dataclass
class Running:
    settings: Settings
    url: str
    server: Component
    prometheus: str


def _prometheus_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.prometheus.port}"


@pytest.fixture(scope="module")
def running(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The console on its own topics, group and ports, against the running local stack."""
    prometheus = _prometheus_url(settings)
    try:
        prometheus_ready = httpx.get(f"{prometheus}/-/ready", timeout=3).status_code == 200
    except httpx.HTTPError:
        prometheus_ready = False
    if not (broker_ready(settings) and prometheus_ready):
        pytest.fail("Kafka or Prometheus of the local stack is not running: start it with `fraud up`")
    unique = f"console-{uuid.uuid4().hex[:10]}"
    isolated_settings = isolated(settings, unique)
    from fraud_features.store import apply

    apply(isolated_settings)  # the feature views the case page reads the card's state through
    port = free_port()
    env = {
        **env_for(isolated_settings),
        "FRAUD_CONSOLE__PORT": str(port),
        "FRAUD_METRICS_PORTS__CONSOLE": str(free_port()),
        "FRAUD_CONSOLE__SESSION_SECRET": "browser-test-session-secret-0123456789",
        "FRAUD_CONSOLE__USERS": orjson.dumps({ANALYST: hash_password(PASSWORD)}).decode(),
        "FRAUD_CONSOLE__INITIAL_OFFSET": "earliest",
        "FRAUD_CONSOLE__REFRESH_S": "1",
        "FRAUD_CONSOLE__DECLINE_SAMPLE_SHARE": "0",
    }
    server = Component(
        "console",
        [sys.executable, "-m", "fraud_app.cli", "console", "serve", "--group", f"console-test-{unique}"],
        f"http://127.0.0.1:{port}/readyz",
        env,
        tmp_path_factory.mktemp("console") / "console.log",
    )
    server.start()
    try:
        server.wait_ready(90)
        yield Running(isolated_settings, f"http://127.0.0.1:{port}", server, prometheus)
    finally:
        server.stop()
        names = sorted(spec.name for spec in isolated_settings.topics.all())
        client = admin(settings)
        try:
            client.delete_topics(names, timeout_ms=60_000)
        finally:
            client.close()
        CREATED_TOPICS.difference_update(names)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.get_screenshot_as_file(str(SCREENSHOTS / f"{name}.png"))


def _wait(driver: WebDriver, timeout_s: float = 20) -> WebDriverWait[WebDriver]:
    # htmx swaps refreshed parts in place: an element found just before a swap goes stale,
    # and the condition is asked again rather than failing.
    return WebDriverWait(
        driver, timeout_s, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
    )


def _produce_review(settings: Settings, transaction_id: str) -> dict[str, Any]:
    """A transaction on the test's transactions topic and its `review` decision on the
    test's fraud-scores, as the platform writes them (the decision names the record's time)."""
    now = datetime.now(UTC)
    tx = transaction(4242, transaction_id=transaction_id, timestamp=format_timestamp(now))
    ingested_ms = int(now.timestamp() * 1000)
    prod = producer(settings)
    prod.send(
        settings.topics.transactions.name,
        key=tx["card_id"].encode(),
        value=orjson.dumps(tx),
        timestamp_ms=ingested_ms,
    ).get(10)
    event = decision(
        tx,
        "review",
        0.73,
        ingested_at=datetime.fromtimestamp(ingested_ms / 1000, UTC).isoformat(),
        scored_at=format_timestamp(datetime.now(UTC)),
    )
    assert validate(ContractKind.DECISION, event).ok
    prod.send(settings.topics.scores.name, key=transaction_id.encode(), value=orjson.dumps(event)).get(10)
    prod.close()
    return tx


def _case_events(settings: Settings, case_id: str) -> list[EventKind]:
    cons = consumer(settings, None, settings.topics.cases.name)
    kinds: list[EventKind] = []
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            for records in cons.poll(timeout_ms=200).values():
                kinds += [
                    CaseEvent.from_record(r.key, r.value).kind for r in records if r.key == case_id.encode()
                ]
    finally:
        cons.close()
    return kinds


def _prometheus_targets_up(prometheus: str) -> int:
    result = httpx.get(f"{prometheus}/api/v1/query", params={"query": "up"}, timeout=5).json()
    return sum(1 for sample in result["data"]["result"] if sample["value"][1] == "1")


def test_an_analysts_verdict_reaches_fraud_labels(running: Running, browser: WebDriver) -> None:
    driver, url, settings = browser, running.url, running.settings
    labels = LabelWatch(settings)
    try:
        # Sign in.
        driver.get(f"{url}/live")
        _wait(driver).until(lambda d: d.current_url.endswith("/login"))
        _screenshot(driver, "1-sign-in")
        driver.find_element(By.ID, "name").send_keys(ANALYST)
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "sign-in").click()
        _wait(driver).until(lambda d: d.current_url.endswith("/live"))
        assert driver.find_element(By.ID, "analyst").text == ANALYST
        cookie = driver.get_cookie("fraud_console_session")
        assert cookie is not None
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")

        # The live page refreshes itself (htmx) with Prometheus's numbers; the charts draw.
        first = _wait(driver).until(
            lambda d: d.find_element(By.ID, "live-numbers").get_attribute("data-rendered-at")
        )
        _wait(driver).until(
            lambda d: d.find_element(By.ID, "live-numbers").get_attribute("data-rendered-at") != first
        )
        _wait(driver).until(
            lambda d: d.find_element(By.ID, "chart-decisions").get_attribute("data-updated-at")
        )
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-latency canvas")
        assert not driver.find_elements(By.ID, "live-error")
        shown = int(driver.find_element(By.ID, "targets-up").text)
        assert abs(shown - _prometheus_targets_up(running.prometheus)) <= 1  # a target may flap meanwhile
        _screenshot(driver, "2-live")

        # A review decision opens a case; the queue shows it without a reload.
        transaction_id = f"tx-browser-{int(time.time() * 1000)}"
        tx = _produce_review(settings, transaction_id)
        case_id = case_id_of(transaction_id)
        driver.get(f"{url}/queue")
        row = f'tr[data-transaction-id="{transaction_id}"]'
        _wait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
        _screenshot(driver, "3-queue")

        # Claim it and record the verdict.
        driver.find_element(By.CSS_SELECTOR, f"{row} a").click()
        _wait(driver).until(lambda d: d.find_elements(By.ID, "claim"))
        assert driver.find_element(By.ID, "transaction-id").text == transaction_id
        assert "amount" in driver.find_element(By.ID, "reasons").text
        driver.find_element(By.ID, "claim").click()
        _wait(driver).until(lambda d: d.find_elements(By.ID, "verdict-form"))
        driver.find_element(By.ID, "verdict-fraud").click()
        driver.find_element(By.ID, "note").send_keys(NOTE)
        _screenshot(driver, "4-case")
        form = {
            name: driver.find_element(By.CSS_SELECTOR, f'#verdict-form input[name="{name}"]').get_attribute(
                "value"
            )
            for name in ("csrf_token", "form_token")
        }
        clicked = time.monotonic()
        driver.find_element(By.ID, "submit-verdict").click()
        arrived, record = labels.wait_for(transaction_id)
        print(
            f"\nverdict click -> label on {settings.topics.labels.name}: {(arrived - clicked) * 1000:.0f} ms"
        )
        _wait(driver).until(lambda d: d.current_url.endswith("/queue"))
        assert "Verdict recorded: fraud" in driver.find_element(By.ID, "flash").text
        _screenshot(driver, "5-queue-after-verdict")

        label = orjson.loads(record.value)
        assert validate(ContractKind.FRAUD_LABEL, label).ok, validate(ContractKind.FRAUD_LABEL, label).reason
        assert record.key == tx["card_id"].encode()
        assert (label["source"], label["analyst"], label["is_fraud"]) == ("analyst", ANALYST, True)
        assert (label["card_id"], label["terminal_id"]) == (tx["card_id"], tx["terminal_id"])
        assert dict(record.headers)["case-id"] == case_id.encode()
        assert NOTE not in record.value.decode()

        # The same form posted again (a replay) and a forged one: refused, nothing written.
        for csrf, expected in ((form["csrf_token"], "already submitted"), ("forged", "security token")):
            driver.execute_script(
                """const [action, csrf, token] = arguments;
                const f = document.createElement("form");
                f.method = "post"; f.action = action;
                for (const [n, v] of [["csrf_token", csrf], ["form_token", token], ["verdict", "legitimate"], ["note", ""]]) {
                  const i = document.createElement("input"); i.type = "hidden"; i.name = n; i.value = v; f.appendChild(i);
                }
                document.body.appendChild(f); f.submit();""",
                f"{url}/cases/{case_id}/verdict",
                csrf,
                form["form_token"],
            )
            _wait(driver).until(lambda d: d.find_elements(By.ID, "refusal"))
            assert expected in driver.find_element(By.ID, "refusal").text
            assert "Refused (40" in driver.find_element(By.TAG_NAME, "h1").text
        _screenshot(driver, "6-replay-refused")
        time.sleep(1.0)  # anything a refused post had written would be on the topics by now
        assert len(labels.of(transaction_id)) == 1
        assert _case_events(settings, case_id) == [
            EventKind.OPENED,
            EventKind.CLAIMED,
            EventKind.CLOSED,
            EventKind.LABELLED,
        ]
    finally:
        labels.stop.set()
        labels.thread.join(5)
