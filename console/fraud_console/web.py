"""The console's pages: server-rendered (Jinja2), refreshed by htmx polling, forms posted plainly.

Every POST is checked in this order, and refused with a 4xx page before anything is written:
its size (413), the session's CSRF token (403), a signed-in analyst (403), the case (404;
409 once closed), the fields (422), the form's one-time token (409: replayed or submitted
twice), then the transition itself (409: held by another analyst, already decided).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware.sessions import SessionMiddleware

from fraud_console.auth import FormTokens, Passwords, csrf_matches, new_csrf_token
from fraud_console.cases import Case, CaseConflictError, Status, UnknownCaseError
from fraud_console.desk import ReviewDesk
from fraud_console.history import CardHistory, HistoryUnavailableError
from fraud_console.live import PrometheusReader
from fraud_console.metrics import REJECTED, SIGN_INS
from fraudcore.events import parse_timestamp
from fraudcore.features import CARD_FEATURES, MODEL_FEATURES
from fraudcore.settings import ANALYST_NAME, Settings

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "fraud_console_session"
MAX_FORM_BYTES = 64 * 1024
VERDICTS = {"fraud": True, "legitimate": False}
SECURITY_HEADERS = {
    # Scripts and styles from the console only (htmx and uPlot are served from /static).
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class RefusedError(Exception):
    """A request refused before anything was written."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class SignInRequiredError(Exception):
    pass


@dataclass
class Console:
    """What the pages work with."""

    settings: Settings
    desk: ReviewDesk
    live: PrometheusReader
    history: CardHistory | None
    passwords: Passwords
    tokens: FormTokens
    not_ready: Callable[[], str | None]  # why the console is not ready (None: it is)


def create_app(console: Console) -> FastAPI:
    settings = console.settings.console
    secret = settings.session_secret.get_secret_value()
    if not secret:
        raise ValueError("console.session_secret is not set (FRAUD_CONSOLE__SESSION_SECRET, 32+ characters)")
    app = FastAPI(title="Fraud review console", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie=SESSION_COOKIE,
        max_age=settings.session_max_age_s,
        same_site="strict",
        https_only=settings.secure_cookie,
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(
        {"short_time": _short_time, "number": _number, "percent": _percent, "money": _money}
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(RefusedError)
    async def refused(request: Request, exc: RefusedError) -> Response:
        REJECTED.labels(exc.reason).inc()
        return page(request, "error.html", {"status": exc.status, "message": exc.message}, exc.status)

    @app.exception_handler(SignInRequiredError)
    async def sign_in(request: Request, _exc: SignInRequiredError) -> Response:
        if request.headers.get("HX-Request"):
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        return RedirectResponse("/login", status_code=303)

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        session = request.session
        if "csrf" not in session:
            session["csrf"] = new_csrf_token()
        analyst = session.get("analyst")
        base = {
            "analyst": analyst if console.passwords.knows(analyst) else None,
            "csrf_token": session["csrf"],
            "flash": session.pop("flash", None),
            "refresh_s": settings.refresh_s,
            "now": console.desk.clock(),
        }
        return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)

    def analyst_of(request: Request) -> str:
        name = request.session.get("analyst")
        if not console.passwords.knows(name):
            request.session.pop("analyst", None)
            raise SignInRequiredError
        return str(name)

    async def posted(request: Request) -> FormData:
        """The form, once its size and CSRF token are checked."""
        length = request.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > MAX_FORM_BYTES:
            raise RefusedError(413, "bad_input", f"A form may hold at most {MAX_FORM_BYTES // 1024} KiB.")
        form = await request.form(max_files=0, max_fields=16)
        if not csrf_matches(request.session.get("csrf"), form.get("csrf_token")):
            raise RefusedError(
                403,
                "csrf",
                "This form's security token does not match your session: a forged request, or "
                "a session that has ended. Reload the page and try again.",
            )
        return form

    def posted_by(request: Request) -> str:
        name = request.session.get("analyst")
        if not console.passwords.knows(name):
            raise RefusedError(403, "signed_out", "Sign in first.")
        return str(name)

    def known_case(case_id: str) -> Case:
        try:
            return console.desk.case(case_id)
        except UnknownCaseError:
            raise RefusedError(404, "unknown_case", f"There is no case {case_id[:64]!r}.") from None
        except CaseConflictError as exc:
            raise RefusedError(409, "conflict", f"Nothing was changed: {exc}.") from None

    def redeem(form: FormData, case_id: str, analyst: str) -> dict[str, Any]:
        seen = console.tokens.redeem(str(form.get("form_token", "")), case_id, analyst)
        if seen is None:
            raise RefusedError(
                409,
                "replayed_form",
                "This form was already submitted (or is too old): nothing more was recorded. "
                "Open the case again to see where it stands.",
            )
        return seen

    async def transition(work: Callable[[], Case]) -> Case:
        try:
            return await run_in_threadpool(work)
        except UnknownCaseError:
            raise RefusedError(404, "unknown_case", "There is no such case.") from None
        except CaseConflictError as exc:
            raise RefusedError(409, "conflict", f"Nothing was changed: {exc}.") from None

    # --- probes ---------------------------------------------------------------------------
    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/readyz")
    def readyz() -> Response:
        reason = console.not_ready()
        return PlainTextResponse(reason or "ready", status_code=503 if reason else 200)

    # --- sign-in --------------------------------------------------------------------------
    @app.get("/login")
    def login_page(request: Request) -> Response:
        if console.passwords.knows(request.session.get("analyst")):
            return RedirectResponse("/live", status_code=303)
        return page(request, "login.html", {"error": None, "name": ""})

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await posted(request)
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        valid = bool(ANALYST_NAME.fullmatch(name)) and len(password) <= 1024
        if not (valid and await run_in_threadpool(console.passwords.verify, name, password)):
            SIGN_INS.labels("refused").inc()
            context = {"error": "Wrong name or password.", "name": name[:128]}
            return page(request, "login.html", context, 401)
        SIGN_INS.labels("signed_in").inc()
        request.session.clear()  # a fresh session: no fixation
        request.session.update({"analyst": name, "csrf": new_csrf_token()})
        return RedirectResponse("/live", status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await posted(request)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # --- live -----------------------------------------------------------------------------
    @app.get("/")
    def home() -> Response:
        return RedirectResponse("/live", status_code=303)

    @app.get("/live")
    async def live_page(request: Request) -> Response:
        analyst_of(request)
        return page(request, "live.html", {"live": await console.live.picture()})

    @app.get("/live/panel")
    async def live_panel(request: Request) -> Response:
        analyst_of(request)
        waiting = console.desk.queue()
        return page(
            request, "_live_panel.html", {"live": await console.live.picture(), "waiting": len(waiting)}
        )

    @app.get("/live/series.json")
    async def live_series(request: Request) -> Response:
        analyst_of(request)
        try:
            return JSONResponse(await console.live.series())
        except Exception as exc:
            log.warning("series: %s", exc)
            return JSONResponse({"error": f"Prometheus: {type(exc).__name__}"}, status_code=502)

    # --- queue ----------------------------------------------------------------------------
    def queue_context() -> dict[str, Any]:
        return {"cases": console.desk.queue()[:200], "decided": console.desk.decided()[:20]}

    @app.get("/queue")
    def queue_page(request: Request) -> Response:
        analyst_of(request)
        return page(request, "queue.html", queue_context())

    @app.get("/queue/table")
    def queue_table(request: Request) -> Response:
        analyst_of(request)
        return page(request, "_queue_table.html", queue_context())

    # --- a case ---------------------------------------------------------------------------
    @app.get("/cases/{case_id}")
    def case_page(request: Request, case_id: str) -> Response:
        analyst = analyst_of(request)
        case = known_case(case_id)
        card_now, card_error = None, None
        if console.history is not None:
            try:
                card_now = console.history.lookup(case.decision["card_id"])
            except HistoryUnavailableError as exc:
                card_error = str(exc)
        else:
            card_error = "the online store is not configured"
        now = console.desk.clock()
        mine = case.status is Status.CLAIMED and case.claimant == analyst
        seen = seen_on_form(case, card_now, card_error)
        return page(
            request,
            "case.html",
            {
                "case": case,
                "mine": mine,
                "held_by_other": case.held_by_other(analyst, now),
                "claim_expired": case.status is Status.CLAIMED and case.claim_expired(now),
                "reasons": reason_rows(case),
                "features": [(n, case.decision.get("features", {}).get(n)) for n in MODEL_FEATURES],
                "card_rows": card_rows(case, card_now),
                "card_now": card_now,
                "card_error": card_error,
                "card_last_tx": card_now and card_now.get("card_last_tx_time"),
                "note_max": settings.note_max_chars,
                "claim_token": console.tokens.issue(case.case_id, analyst, {}),
                "release_token": console.tokens.issue(case.case_id, analyst, {}),
                "verdict_token": console.tokens.issue(case.case_id, analyst, seen) if mine else None,
            },
        )

    @app.post("/cases/{case_id}/claim")
    async def claim(request: Request, case_id: str) -> Response:
        form = await posted(request)
        analyst = posted_by(request)
        known_case(case_id)
        redeem(form, case_id, analyst)
        await transition(lambda: console.desk.claim(case_id, analyst))
        return RedirectResponse(f"/cases/{case_id}", status_code=303)

    @app.post("/cases/{case_id}/release")
    async def release(request: Request, case_id: str) -> Response:
        form = await posted(request)
        analyst = posted_by(request)
        known_case(case_id)
        redeem(form, case_id, analyst)
        await transition(lambda: console.desk.release(case_id, analyst))
        request.session["flash"] = "Case released: it is back in the queue."
        return RedirectResponse("/queue", status_code=303)

    @app.post("/cases/{case_id}/verdict")
    async def verdict(request: Request, case_id: str) -> Response:
        form = await posted(request)
        analyst = posted_by(request)
        known_case(case_id)
        choice = str(form.get("verdict", ""))
        note = str(form.get("note", "")).replace("\r\n", "\n").strip()
        if choice not in VERDICTS:
            raise RefusedError(422, "bad_input", "The verdict must be fraud or legitimate.")
        if len(note) > settings.note_max_chars:
            raise RefusedError(
                422,
                "bad_input",
                f"The note has {len(note):,} characters; at most {settings.note_max_chars:,} are kept.",
            )
        seen = redeem(form, case_id, analyst)
        case = await transition(lambda: console.desk.decide(case_id, analyst, VERDICTS[choice], note, seen))
        published = (
            f" Its label is on fraud-labels (partition:offset {case.label_position})."
            if case.label_position
            else " Its label will be published as soon as Kafka accepts it."
        )
        request.session["flash"] = f"Verdict recorded: {choice}.{published}"
        return RedirectResponse("/queue", status_code=303)

    return app


def seen_on_form(case: Case, card_now: dict[str, Any] | None, card_error: str | None) -> dict[str, Any]:
    """What the verdict form shows, kept with the verdict (the audit's ``seen``)."""
    decision = case.decision
    return {
        "score": decision["score"],
        "decision": decision["decision"],
        "model_version": decision["model_version"],
        "reasons": decision["reasons"],
        "features": decision.get("features", {}),
        "transaction": case.transaction,
        "card_now": card_now,
        "card_now_error": card_error,
    }


def reason_rows(case: Case) -> list[tuple[str, float, float | None]]:
    """Each reason code with its contribution and the feature's served value."""
    features = case.decision.get("features", {})
    return [(r["feature"], r["contribution"], features.get(r["feature"])) for r in case.decision["reasons"]]


def card_rows(case: Case, card_now: dict[str, Any] | None) -> list[tuple[str, float | None, float | None]]:
    """The card's windows just before the transaction (as served) and in the store now."""
    features = case.decision.get("features", {})
    return [(n, features.get(n), (card_now or {}).get(n)) for n in CARD_FEATURES]


def _short_time(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, datetime):
        moment = value
    else:
        moment = parse_timestamp(str(value))
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    number = float(value)
    return f"{number:,.0f}" if number.is_integer() and abs(number) >= 1 else f"{number:,.{digits}f}"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1%}"


def _money(value: Any, currency: str = "") -> str:
    return "-" if value is None else f"{float(value):,.2f} {currency}".strip()
