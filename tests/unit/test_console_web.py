"""The review console's pages over HTTP (FastAPI's TestClient): sign-in and the session
cookie, CSRF and one-time form tokens, and the 4xx answers to bad requests, each checked to
have written nothing. The Kafka side is the in-memory case log; Prometheus answers through
httpx's mock transport."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from fraud_console.auth import FormTokens, Passwords, hash_password
from fraud_console.cases import CaseBook, Status, case_id_of
from fraud_console.desk import ReviewDesk
from fraud_console.history import CardHistory
from fraud_console.live import PrometheusReader
from fraud_console.web import SESSION_COOKIE, Console, create_app
from fraudcore.settings import ConsoleSettings, Settings
from tests.console_helpers import Clock, MemoryLog, decision, transaction

PASSWORD = "correct horse battery"
HASH = hash_password(PASSWORD)
SECRET = "s" * 40
CARD_NOW = {"card_tx_count_1h": 9.0, "card_last_tx_time": 1_772_366_400.0}


class StoredCard(CardHistory):
    def __init__(self) -> None:
        pass

    def lookup(self, card_id: str) -> dict[str, Any] | None:
        return dict(CARD_NOW)


def prometheus(request: httpx.Request) -> httpx.Response:
    query = request.url.params.get("query", "")
    results: dict[str, list[dict[str, Any]]] = {
        "sum(rate(fraud_decisions_total[1m]))": [{"metric": {}, "value": [0, "412.5"]}],
        "max by (model, version) (predictor_model_info == 1)": [
            {"metric": {"model": "fraud", "version": "v-champion"}, "value": [0, "1"]},
            {"metric": {"model": "fraud-shadow", "version": "v-challenger"}, "value": [0, "1"]},
        ],
        "max by (model_version) (fraud_live_precision)": [
            {"metric": {"model_version": "v-champion"}, "value": [0, "0.8125"]}
        ],
        "topk(5, max by (feature) (fraud_feature_psi))": [
            {"metric": {"feature": "amount"}, "value": [0, "0.31"]}
        ],
    }
    if request.url.path.endswith("/query_range"):
        return httpx.Response(200, json={"status": "success", "data": {"result": []}})
    return httpx.Response(200, json={"status": "success", "data": {"result": results.get(query, [])}})


@dataclass
class Setup:
    client: TestClient
    log: MemoryLog
    desk: ReviewDesk
    case_id: str

    def sign_in(self, name: str = "alice", password: str = PASSWORD) -> httpx.Response:
        csrf = fields(self.client.get("/login").text, "login-form")["csrf_token"]
        return self.client.post("/login", data={"csrf_token": csrf, "name": name, "password": password})

    def case_form(self, form_id: str) -> dict[str, str]:
        return fields(self.client.get(f"/cases/{self.case_id}").text, form_id)

    def written(self) -> tuple[int, int]:
        return len(self.log.records), len(self.log.labels)


def fields(html: str, form_id: str) -> dict[str, str]:
    """The hidden fields of one form of a page."""
    match = re.search(rf'<form[^>]*id="{form_id}"[^>]*>(.*?)</form>', html, re.S)
    assert match, f"no form {form_id} on the page"
    return dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', match.group(1)))


def console_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "session_secret": SECRET,
        "users": {"alice": HASH, "bob": HASH},
        "note_max_chars": 50,
        "prometheus_url": "http://prometheus.test",
    }
    return Settings(console=ConsoleSettings(**{**base, **overrides}))


@pytest.fixture
def setup() -> Iterator[Setup]:
    settings = console_settings()
    log = MemoryLog()
    desk = ReviewDesk(CaseBook(), log, claim_timeout_s=600, case_expiry_s=86_400, clock=Clock())
    tx = transaction(3)
    desk.open(decision(tx), tx)
    reader = PrometheusReader(settings, httpx.AsyncClient(transport=httpx.MockTransport(prometheus)))
    console = Console(
        settings, desk, reader, StoredCard(), Passwords(settings.console.users), FormTokens(), lambda: None
    )
    with TestClient(create_app(console), follow_redirects=False) as client:
        yield Setup(client, log, desk, case_id_of(tx["transaction_id"]))


# --------------------------------------------------------------------------- sign-in
def test_pages_need_a_signed_in_analyst(setup: Setup) -> None:
    for path in ("/live", "/queue", f"/cases/{setup.case_id}", "/live/panel"):
        response = setup.client.get(path)
        assert (response.status_code, response.headers["location"]) == (303, "/login"), path
    fragment = setup.client.get("/queue/table", headers={"HX-Request": "true"})
    assert (fragment.status_code, fragment.headers["HX-Redirect"]) == (401, "/login")


def test_a_wrong_password_or_unknown_name_is_refused_alike(setup: Setup) -> None:
    for name, password in (("alice", "wrong password!"), ("mallory", PASSWORD), ("alice\n", PASSWORD)):
        response = setup.sign_in(name, password)
        assert response.status_code == 401
        assert "Wrong name or password." in response.text
    assert setup.client.get("/live").status_code == 303


def test_signing_in_sets_a_signed_http_only_strict_cookie(setup: Setup) -> None:
    before = setup.client.cookies.get(SESSION_COOKIE)
    response = setup.sign_in()
    assert (response.status_code, response.headers["location"]) == (303, "/live")
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()
    assert setup.client.cookies.get(SESSION_COOKIE) != before  # a fresh session
    page = setup.client.get("/live")
    assert page.status_code == 200
    assert '<span id="analyst">alice</span>' in page.text
    assert HASH not in page.text
    assert SECRET not in page.text

    value = setup.client.cookies.get(SESSION_COOKIE)
    assert value
    setup.client.cookies.set(SESSION_COOKIE, value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    assert setup.client.get("/live").status_code == 303  # a tampered cookie is no session


def test_a_secure_cookie_when_configured() -> None:
    settings = console_settings(secure_cookie=True)
    desk = ReviewDesk(CaseBook(), MemoryLog(), claim_timeout_s=60, case_expiry_s=60)
    console = Console(
        settings, desk, PrometheusReader(settings), None, Passwords({}), FormTokens(), lambda: None
    )
    with TestClient(create_app(console), base_url="https://testserver") as client:
        assert "secure" in client.get("/login").headers["set-cookie"].lower()


def test_the_console_refuses_to_start_without_a_session_secret() -> None:
    settings = console_settings(session_secret="")
    desk = ReviewDesk(CaseBook(), MemoryLog(), claim_timeout_s=60, case_expiry_s=60)
    console = Console(
        settings, desk, PrometheusReader(settings), None, Passwords({}), FormTokens(), lambda: None
    )
    with pytest.raises(ValueError, match="session_secret"):
        create_app(console)


def test_sign_in_and_out_need_the_csrf_token(setup: Setup) -> None:
    setup.client.get("/login")
    response = setup.client.post("/login", data={"name": "alice", "password": PASSWORD})
    assert response.status_code == 403
    assert setup.client.get("/live").status_code == 303
    setup.sign_in()
    assert setup.client.post("/logout", data={"csrf_token": "forged"}).status_code == 403
    assert setup.client.get("/live").status_code == 200


# --------------------------------------------------------------------------- the flow
def test_claim_and_verdict_record_it_and_publish_the_label(setup: Setup) -> None:
    setup.sign_in()
    page = setup.client.get(f"/cases/{setup.case_id}")
    assert page.status_code == 200
    assert "card_tx_count_1h" in page.text
    assert "Claim this case" in page.text
    assert 'id="verdict-form"' not in page.text  # not before the claim
    response = setup.client.post(f"/cases/{setup.case_id}/claim", data=setup.case_form("claim-form"))
    assert (response.status_code, response.headers["location"]) == (303, f"/cases/{setup.case_id}")
    form = setup.case_form("verdict-form")
    response = setup.client.post(
        f"/cases/{setup.case_id}/verdict", data={**form, "verdict": "fraud", "note": "two countries in 5 min"}
    )
    assert (response.status_code, response.headers["location"]) == (303, "/queue")
    assert "Verdict recorded: fraud" in setup.client.get("/queue").text
    case = setup.desk.case(setup.case_id)
    assert case.status is Status.CLOSED
    assert case.verdict is not None
    assert (case.verdict.analyst, case.verdict.note) == ("alice", "two countries in 5 min")
    assert case.verdict.seen["card_now"] == CARD_NOW  # what the form showed
    assert case.verdict.seen["reasons"] == case.decision["reasons"]
    assert [label["analyst"] for _, label in setup.log.labels] == ["alice"]


# --------------------------------------------------------------------------- bad requests
def test_forged_posts_are_refused_and_write_nothing(setup: Setup) -> None:
    setup.sign_in()
    form = setup.case_form("claim-form")
    before = setup.written()
    for data in ({**form, "csrf_token": "forged"}, {"form_token": form["form_token"]}):
        response = setup.client.post(f"/cases/{setup.case_id}/claim", data=data)
        assert response.status_code == 403
        assert "security token does not match" in response.text
    assert setup.written() == before
    assert setup.desk.case(setup.case_id).status is Status.OPEN


def test_a_post_from_another_session_is_refused(setup: Setup) -> None:
    setup.sign_in()
    form = setup.case_form("claim-form")
    setup.client.cookies.clear()
    setup.client.get("/login")  # a session of its own, with another CSRF token
    assert setup.client.post(f"/cases/{setup.case_id}/claim", data=form).status_code == 403
    assert setup.desk.case(setup.case_id).status is Status.OPEN


def test_a_replayed_form_is_refused_and_writes_nothing(setup: Setup) -> None:
    setup.sign_in()
    setup.client.post(f"/cases/{setup.case_id}/claim", data=setup.case_form("claim-form"))
    form = {**setup.case_form("verdict-form"), "verdict": "legitimate", "note": ""}
    assert setup.client.post(f"/cases/{setup.case_id}/verdict", data=form).status_code == 303
    before = setup.written()
    replayed = setup.client.post(f"/cases/{setup.case_id}/verdict", data={**form, "verdict": "fraud"})
    assert replayed.status_code == 409
    assert "already submitted" in replayed.text
    assert setup.written() == before
    assert len(setup.log.labels) == 1


def test_a_claim_form_is_good_once(setup: Setup) -> None:
    setup.sign_in()
    form = setup.case_form("claim-form")
    assert setup.client.post(f"/cases/{setup.case_id}/claim", data=form).status_code == 303
    before = setup.written()
    response = setup.client.post(f"/cases/{setup.case_id}/claim", data=form)
    assert response.status_code == 409
    assert "already submitted" in response.text
    assert setup.written() == before


def test_a_second_verdict_on_a_closed_case_is_refused(setup: Setup) -> None:
    setup.sign_in()
    setup.client.post(f"/cases/{setup.case_id}/claim", data=setup.case_form("claim-form"))
    first = setup.case_form("verdict-form")
    second = setup.case_form("verdict-form")  # another tab, opened before the verdict
    assert (
        setup.client.post(f"/cases/{setup.case_id}/verdict", data={**first, "verdict": "fraud"}).status_code
        == 303
    )
    before = setup.written()
    response = setup.client.post(f"/cases/{setup.case_id}/verdict", data={**second, "verdict": "legitimate"})
    assert response.status_code == 409
    assert "closed: alice recorded fraud" in response.text
    assert setup.written() == before
    assert 'id="verdict-form"' not in setup.client.get(f"/cases/{setup.case_id}").text


def test_unknown_case_ids_get_404(setup: Setup) -> None:
    setup.sign_in()
    csrf = setup.case_form("claim-form")["csrf_token"]
    before = setup.written()
    assert setup.client.get("/cases/no-such-case").status_code == 404
    for action in ("claim", "release", "verdict"):
        response = setup.client.post(
            f"/cases/00000000-0000-0000-0000-000000000000/{action}",
            data={"csrf_token": csrf, "form_token": "x", "verdict": "fraud"},
        )
        assert response.status_code == 404, action
        assert "There is no case" in response.text
    assert setup.written() == before


def test_bad_fields_get_422_and_keep_the_form_usable(setup: Setup) -> None:
    setup.sign_in()
    setup.client.post(f"/cases/{setup.case_id}/claim", data=setup.case_form("claim-form"))
    form = setup.case_form("verdict-form")
    before = setup.written()
    too_long = setup.client.post(
        f"/cases/{setup.case_id}/verdict", data={**form, "verdict": "fraud", "note": "x" * 51}
    )
    assert too_long.status_code == 422
    assert "at most 50" in too_long.text
    unknown = setup.client.post(f"/cases/{setup.case_id}/verdict", data={**form, "verdict": "maybe"})
    assert unknown.status_code == 422
    assert setup.written() == before
    # Nothing was used up: the same form still records the verdict.
    ok = setup.client.post(
        f"/cases/{setup.case_id}/verdict", data={**form, "verdict": "fraud", "note": "x" * 50}
    )
    assert ok.status_code == 303


def test_an_oversized_body_gets_413(setup: Setup) -> None:
    setup.sign_in()
    form = setup.case_form("claim-form")
    response = setup.client.post(f"/cases/{setup.case_id}/claim", data={**form, "padding": "x" * 70_000})
    assert response.status_code == 413
    assert setup.desk.case(setup.case_id).status is Status.OPEN


def test_another_analysts_claim_is_respected(setup: Setup) -> None:
    setup.sign_in()
    setup.client.post(f"/cases/{setup.case_id}/claim", data=setup.case_form("claim-form"))
    setup.client.cookies.clear()
    setup.sign_in("bob")
    page = setup.client.get(f"/cases/{setup.case_id}").text
    assert "Claimed by alice" in page
    for form in ("claim-form", "verdict-form", "release-form"):
        assert f'id="{form}"' not in page
    before = setup.written()
    # A claim form bob opened earlier (while the case was open) cannot take it over.
    setup.desk.release(setup.case_id, "alice")
    stale = setup.case_form("claim-form")
    setup.desk.claim(setup.case_id, "alice")
    response = setup.client.post(f"/cases/{setup.case_id}/claim", data=stale)
    assert response.status_code == 409
    assert "alice has claimed" in response.text
    assert setup.written() == (before[0] + 2, before[1])  # the desk's own release and claim only


# --------------------------------------------------------------------------- pages
def test_the_live_page_shows_prometheus_numbers(setup: Setup) -> None:
    setup.sign_in()
    panel = setup.client.get("/live/panel").text
    assert 'id="decisions-per-s">412.50<' in panel
    assert 'id="champion">v-champion<' in panel
    assert 'id="shadow">v-challenger<' in panel
    assert "81.2%" in panel  # the champion's live precision
    assert "<code>amount</code>" in panel  # the drifting feature
    assert 'id="cases-waiting">1<' in panel
    series = setup.client.get("/live/series.json").json()
    assert set(series) == {"times", "decisions", "latency_ms"}
    assert len(series["decisions"]["review"]) == len(series["times"])


def test_the_live_page_says_when_prometheus_is_away() -> None:
    def away(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    settings = console_settings()
    desk = ReviewDesk(CaseBook(), MemoryLog(), claim_timeout_s=60, case_expiry_s=60)
    reader = PrometheusReader(settings, httpx.AsyncClient(transport=httpx.MockTransport(away)))
    console = Console(
        settings, desk, reader, None, Passwords(settings.console.users), FormTokens(), lambda: None
    )
    with TestClient(create_app(console)) as client:
        csrf = fields(client.get("/login").text, "login-form")["csrf_token"]
        client.post("/login", data={"csrf_token": csrf, "name": "alice", "password": PASSWORD})
        panel = client.get("/live/panel")
        assert panel.status_code == 200
        assert "Prometheus at http://prometheus.test: ConnectError" in panel.text


def test_every_page_carries_the_security_headers(setup: Setup) -> None:
    setup.sign_in()
    for path in ("/login", "/live", "/queue", f"/cases/{setup.case_id}"):
        headers = setup.client.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"], path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"


def test_probes() -> None:
    settings = console_settings()
    desk = ReviewDesk(CaseBook(), MemoryLog(), claim_timeout_s=60, case_expiry_s=60)
    reasons = ["waiting for the fraud-scores partitions"]
    console = Console(
        settings,
        desk,
        PrometheusReader(settings),
        None,
        Passwords({}),
        FormTokens(),
        lambda: reasons[0] if reasons else None,
    )
    with TestClient(create_app(console)) as client:
        assert client.get("/healthz").text == "ok"
        not_ready = client.get("/readyz")
        assert (not_ready.status_code, not_ready.text) == (503, reasons[0])
        reasons.clear()
        assert client.get("/readyz").status_code == 200
