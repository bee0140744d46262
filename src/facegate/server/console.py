"""The console under /console: server-rendered pages (Jinja2, no JavaScript) for the people who review
identifications and govern facegate. It calls the review desk, the console accounts and governance — the same
audited operations as the CLI — never the store or the service.

Sessions are server-side (``console_users.py``): an HttpOnly, SameSite=Strict cookie holds a random token; every
form carries the session's CSRF token, and a POST whose Origin is another site is refused. A case or page a user
is not authorised for answers 404, as one that does not exist.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import anyio.to_thread
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from facegate.console_users import ConsoleAccounts, SignedIn, csrf_matches
from facegate.errors import FacegateError, ResourceNotFoundException
from facegate.governance import Governance
from facegate.review import ReviewDesk
from facegate.store import ConsoleSession, ConsoleUser

log = logging.getLogger("facegate.console")
COOKIE = "facegate_console"
REJECT_ALL = "reject:none"  # the decision form's value for "none of these is the person"
MAX_FORM_BYTES = 64 * 1024
AUDIT_PAGE = 200
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make the browser send "Origin: null" on forms
    "Cache-Control": "no-store",
}


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def console_routes(
    accounts: ConsoleAccounts,
    desk: ReviewDesk,
    governance: Governance,
    read_body: Callable[[Request], Awaitable[bytes]],
) -> list[Route]:
    """The console's routes; ``read_body`` is the server's capped body reader (size and time)."""
    pages = Environment(loader=PackageLoader("facegate.server", "templates"), autoescape=select_autoescape())
    pages.filters["when"] = _when

    def render(template: str, status: int = 200, **values: Any) -> HTMLResponse:
        response = HTMLResponse(pages.get_template(template).render(**values), status_code=status)
        response.headers.update(_SECURITY_HEADERS)
        return response

    async def signed_in(request: Request) -> tuple[ConsoleUser, ConsoleSession]:
        found = await anyio.to_thread.run_sync(accounts.session, request.cookies.get(COOKIE))
        if found is None:
            raise _Refused(401, "sign in")
        return found

    async def form(request: Request, session: ConsoleSession | None) -> dict[str, str]:
        origin = request.headers.get("origin")
        # The host, not the scheme: behind a TLS-terminating proxy the page is https and the request http.
        if origin is not None and urllib.parse.urlsplit(origin).netloc != request.url.netloc:
            raise _Refused(403, "This form was sent from another site.")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
            raise _Refused(413, "The form is too large.")
        body = await read_body(request)
        if len(body) > MAX_FORM_BYTES:
            raise _Refused(413, "The form is too large.")
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise _Refused(415, "The console's forms are sent as application/x-www-form-urlencoded.")
        try:
            fields = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=50))
        except (UnicodeDecodeError, ValueError):
            raise _Refused(400, "The form could not be read.") from None
        if session is not None and not csrf_matches(session, fields.get("csrf")):
            raise _Refused(403, "The form's CSRF token is missing or stale: reload the page and try again.")
        return fields

    def page(handler, *, roles: tuple[str, ...] | None = None, password_ok: bool = False, everyone: bool = False):
        """A signed-in page: 401 → the sign-in page, a role it is not for → 404, a one-time password → change it."""

        async def endpoint(request: Request) -> Response:
            try:
                user, session = await signed_in(request)
                if user.must_change_password and not password_ok:
                    return RedirectResponse("/console/password", 303)
                if roles is not None and user.role not in roles or (everyone and not _global(user)):
                    raise ResourceNotFoundException("No such page.")
                return await handler(request, user, session)
            except _Refused as refused:
                if refused.status == 401:
                    return RedirectResponse("/console/login", 303)
                return render("error.html", refused.status, title=str(refused), user=None)
            except ResourceNotFoundException:
                return render("error.html", 404, title="Not found", user=None)
            except FacegateError as exc:
                user_session = await anyio.to_thread.run_sync(accounts.session, request.cookies.get(COOKIE))
                user, session = user_session if user_session else (None, None)
                return render(
                    "error.html", exc.status, title=exc.message, user=user, csrf=session.csrf_token if session else ""
                )

        return endpoint

    # Signing in and out

    async def login_page(request: Request) -> Response:
        return render("login.html", title="Sign in", user=None)

    async def login(request: Request) -> Response:
        try:
            fields = await form(request, None)
            source = request.client.host if request.client else "unknown"
            done = await anyio.to_thread.run_sync(
                accounts.sign_in, fields.get("username", ""), fields.get("password", ""), source
            )
        except _Refused as refused:
            return render("login.html", refused.status, title="Sign in", user=None, error=str(refused))
        except FacegateError as exc:
            return render("login.html", 403, title="Sign in", user=None, error=exc.message)
        response = RedirectResponse("/console/password" if done.user.must_change_password else "/console/", 303)
        _set_session_cookie(response, request, done)
        return response

    async def logout(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        await form(request, session)
        await anyio.to_thread.run_sync(accounts.sign_out, request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/console/login", 303)
        response.delete_cookie(COOKIE, path="/console")
        return response

    async def password_page(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        return render("password.html", title="Password", user=user, csrf=session.csrf_token)

    async def change_password(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        fields = await form(request, session)
        try:
            done = await anyio.to_thread.run_sync(
                accounts.change_password, user, fields.get("current", ""), fields.get("new", "")
            )
        except FacegateError as exc:
            return render("password.html", 400, title="Password", user=user, csrf=session.csrf_token, error=exc.message)
        response = RedirectResponse("/console/", 303)
        _set_session_cookie(response, request, done)
        return response

    # Review

    async def queue(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        def rows() -> list[dict]:
            return [
                {
                    "case": case,
                    "recorded": desk.decisions_recorded(case),
                    "mine": mine,
                    "show_count": case.status != "open" or mine,
                    "opened": _when(case.created_at),
                }
                for case in desk.cases(user)
                for mine in (desk.decided_by(user, case) is not None,)
            ]

        cases = await anyio.to_thread.run_sync(rows)
        return render("queue.html", title="Review queue", user=user, csrf=session.csrf_token, cases=cases)

    async def case_page(request: Request, user: ConsoleUser, session: ConsoleSession, notice: str | None = None):
        case_id = request.path_params["case_id"]

        def load() -> dict:
            case = desk.case(user, case_id)
            mine = desk.decided_by(user, case)
            return {
                "case": case,
                "facts": case.facts,
                "thumbnails": set(desk.thumbnails(user, case_id)),
                "mine": mine,
                "recorded": desk.decisions_recorded(case),
                # How many have decided is shown once this reviewer has: before, it would hint at their verdicts.
                "show_count": case.status != "open" or mine is not None or user.role != "reviewer",
                "can_decide": user.role == "reviewer" and case.status == "open" and mine is None,
            }

        values = await anyio.to_thread.run_sync(load)
        return render("case.html", title="Review case", user=user, csrf=session.csrf_token, notice=notice, **values)

    async def decide(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        fields = await form(request, session)
        if "candidate" not in fields:
            raise _Refused(400, "Choose a candidate to confirm, or reject them all.")
        candidate = fields["candidate"] if fields["candidate"] != REJECT_ALL else None
        verdict = "confirm" if candidate else "reject"
        case_id = request.path_params["case_id"]
        await anyio.to_thread.run_sync(lambda: desk.decide(user, case_id, verdict, candidate, fields.get("note", "")))
        return RedirectResponse(f"/console/cases/{case_id}?recorded=1", 303)

    async def case_view(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        notice = "Your decision is recorded." if request.query_params.get("recorded") else None
        return await case_page(request, user, session, notice)

    async def probe(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        case = await anyio.to_thread.run_sync(desk.case, user, request.path_params["case_id"])
        if case.probe_crop is None:
            raise ResourceNotFoundException("No probe crop.")
        return Response(case.probe_crop, media_type="image/jpeg", headers=_SECURITY_HEADERS)

    async def candidate(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        crops = await anyio.to_thread.run_sync(desk.thumbnails, user, request.path_params["case_id"])
        crop = crops.get(request.path_params["face_id"])
        if crop is None:
            raise ResourceNotFoundException("No thumbnail.")
        return Response(crop, media_type="image/jpeg", headers=_SECURITY_HEADERS)

    # Governance pages

    async def audit_page(
        request: Request, user: ConsoleUser, session: ConsoleSession, notice: str | None = None
    ) -> Response:
        filters = {k: request.query_params.get(k) or None for k in ("organisation", "decision", "event")}
        # An auditor of some organisations reads theirs only.
        if not _in_scope(user, filters["organisation"] or "*"):
            filters["organisation"] = user.organisations[0]

        def load() -> list[dict]:
            entries = list(governance.audit.entries(**filters))
            return entries[-AUDIT_PAGE:][::-1]

        entries = await anyio.to_thread.run_sync(load)
        return render(
            "audit.html",
            title="Audit log",
            user=user,
            csrf=session.csrf_token,
            entries=entries,
            filters=filters,
            notice=notice,
        )

    async def audit_entry(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        seq = int(request.path_params["seq"])

        def load() -> tuple[dict, dict]:
            entry = next(iter(e for e in governance.audit.entries() if e.get("seq") == seq), None)
            if entry is None or not _in_scope(user, entry.get("organisation") or "*"):
                raise ResourceNotFoundException("No such entry.")
            return entry, governance.audit.inclusion_proof(seq)

        entry, proof = await anyio.to_thread.run_sync(load)
        return render(
            "audit_entry.html",
            title=f"Audit entry {seq}",
            user=user,
            csrf=session.csrf_token,
            entry=json.dumps(entry, indent=2, sort_keys=True),
            proof=json.dumps(proof, indent=2),
            seq=seq,
        )

    async def verify_audit(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        await form(request, session)
        report = await anyio.to_thread.run_sync(governance.audit.verify)
        notice = (
            f"The log verifies: {report.entries} entries, root {report.root}."
            if report.ok
            else f"The log does NOT verify: {'; '.join(report.problems[:5])}"
        )
        return await audit_page(request, user, session, notice)

    async def users_page(request: Request, user: ConsoleUser, session: ConsoleSession, **extra: Any) -> Response:
        users = [
            u
            for u in await anyio.to_thread.run_sync(accounts.users)
            if _global(user) or set(u.organisations) & set(user.organisations)
        ]
        return render("users.html", title="Console users", user=user, csrf=session.csrf_token, users=users, **extra)

    async def create_user(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        fields = await form(request, session)
        organisations = tuple(o.strip() for o in fields.get("organisations", "").split(",") if o.strip())
        if not all(_in_scope(user, o) for o in organisations):
            return await users_page(request, user, session, error="You can add users only for your organisations.")
        try:
            password = await anyio.to_thread.run_sync(
                lambda: accounts.create(
                    fields.get("username", ""), fields.get("role", ""), organisations, actor=f"console:{user.username}"
                )
            )
        except FacegateError as exc:
            return await users_page(request, user, session, error=exc.message)
        notice = f"Created {fields['username']}; one-time password (shown once): {password}"
        return await users_page(request, user, session, notice=notice)

    # Governance: organisations, use cases, keys, policies (operators change them; auditors read)

    def governance_values(user: ConsoleUser) -> dict[str, Any]:
        from facegate.policy.templates import TEMPLATES

        states = governance.policy_states()
        policies = []
        for name, template in TEMPLATES.items():
            state = states.get(name)
            policies.append(
                {
                    "name": name,
                    "title": template.title,
                    "cedar": template.cedar(),
                    "always": template.always_on,
                    "active": bool(state and state.active),
                    "params": json.dumps(state.params if state else template.defaults, sort_keys=True),
                    "reason": state.reason if state else "",
                }
            )
        return {
            "organisations": [o for o in governance.organisations() if _in_scope(user, o.name)],
            "use_cases": [u for u in governance.use_cases() if _in_scope(user, u.organisation)],
            "policies": policies,
            "global_user": _global(user),
        }

    async def governance_page(request: Request, user: ConsoleUser, session: ConsoleSession, **extra: Any) -> Response:
        values = await anyio.to_thread.run_sync(governance_values, user)
        return render("governance.html", title="Governance", user=user, csrf=session.csrf_token, **values, **extra)

    def governance_change(change):
        """A POST from the governance page: the change, audited by Governance as the console user."""

        async def endpoint(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
            fields = await form(request, session)
            try:
                shown = await anyio.to_thread.run_sync(lambda: change(fields, user))
            except FacegateError as exc:
                return await governance_page(request, user, session, error=exc.message)
            except ValueError as exc:  # a template's parameters that do not parse
                return await governance_page(request, user, session, error=str(exc))
            return await governance_page(request, user, session, notice="Done.", **(shown or {}))

        return endpoint

    # An operator of some organisations changes only theirs; policies (they span organisations) and '*' users
    # are for global operators.

    def set_status(fields: dict, user: ConsoleUser) -> None:
        _require_scope(user, fields.get("name", ""))
        governance.set_organisation_status(
            fields.get("name", ""), fields.get("status", ""), fields.get("reason", ""), _actor(user)
        )

    def revoke_use_case(fields: dict, user: ConsoleUser) -> None:
        use_case = governance.use_case(fields.get("use_case", ""))
        _require_scope(user, use_case.organisation if use_case else "")
        governance.revoke_use_case(fields.get("use_case", ""), fields.get("reason", ""), _actor(user))

    def key_change(fields: dict, user: ConsoleUser) -> dict | None:
        if fields.get("action") == "revoke":
            _require_scope(user, governance.key_owner(fields.get("access_key_id", "")) or "")
            governance.revoke_key(fields.get("access_key_id", ""), fields.get("reason", ""), _actor(user))
            return None
        use_case_id = fields.get("use_case") or None
        if use_case_id is not None:
            use_case = governance.use_case(use_case_id)
            _require_scope(user, use_case.organisation if use_case else "")
        else:
            _require_scope(user, fields.get("organisation") or "")
        issued = governance.issue_key(
            use_case_id=use_case_id, organisation=fields.get("organisation") or None, actor=_actor(user)
        )
        return {"secret": issued}

    def policy_change(fields: dict, user: ConsoleUser) -> None:
        if not _global(user):
            raise ResourceNotFoundException("Policies apply to every organisation: a global operator changes them.")
        template, reason = fields.get("template", ""), fields.get("reason", "")
        if fields.get("action") == "deactivate":
            governance.deactivate(template, reason, _actor(user))
        else:
            settings = [line.strip() for line in fields.get("settings", "").splitlines() if line.strip()]
            governance.activate(template, settings, reason, _actor(user))

    # Reports: the fairness audit of record, the transparency report

    async def fairness_page(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        curves = await anyio.to_thread.run_sync(governance.active_audit)
        values = (
            {"src": "/console/fairness/report", "summary": f"The fairness audit the gate reads: {curves.audit_id}."}
            if curves is not None
            else {"missing": "No fairness audit is active (facegate fairness activate REPORT)."}
        )
        return render("report.html", title="Fairness audit", user=user, csrf=session.csrf_token, **values)

    async def fairness_report(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        from facegate.fairness.report import audit_html, gate_view_html

        def build() -> str:
            report = governance.active_audit_report()
            if report is None:
                raise ResourceNotFoundException("No fairness audit.")
            try:
                return audit_html(report)
            except (KeyError, TypeError):  # a report with only what the gate reads (curves by group)
                return gate_view_html(report)

        return _document(await anyio.to_thread.run_sync(build))

    async def transparency_page(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        return render(
            "report.html",
            title="Transparency report",
            user=user,
            csrf=session.csrf_token,
            src="/console/transparency/report",
            summary="Everything the audit log holds: requests by category, purpose and operation, denials by "
            "policy, matches, thresholds, governance events.",
        )

    async def transparency_report(request: Request, user: ConsoleUser, session: ConsoleSession) -> Response:
        from facegate import transparency

        def build() -> str:
            report = transparency.build(governance.audit, governance.organisations(), 0.0, time.time() + 1)
            return transparency.html_report(report)

        return _document(await anyio.to_thread.run_sync(build))

    async def stylesheet(request: Request) -> Response:
        css = resources.files("facegate.server").joinpath("static/console.css").read_text()
        return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=300"})

    async def home(request: Request) -> Response:
        return RedirectResponse("/console/", 303)

    operators = ("operator",)
    governors = ("operator", "auditor")
    return [
        Route("/console", home, methods=["GET"]),
        Route("/console/static/console.css", stylesheet, methods=["GET"]),
        Route("/console/login", login_page, methods=["GET"]),
        Route("/console/login", login, methods=["POST"]),
        Route("/console/logout", page(logout, password_ok=True), methods=["POST"]),
        Route("/console/password", page(password_page, password_ok=True), methods=["GET"]),
        Route("/console/password", page(change_password, password_ok=True), methods=["POST"]),
        Route("/console/", page(queue), methods=["GET"]),
        Route("/console/cases/{case_id}", page(case_view), methods=["GET"]),
        Route("/console/cases/{case_id}/decision", page(decide, roles=("reviewer",)), methods=["POST"]),
        Route("/console/cases/{case_id}/probe.jpg", page(probe), methods=["GET"]),
        Route("/console/cases/{case_id}/candidates/{face_id}.jpg", page(candidate), methods=["GET"]),
        Route("/console/audit", page(audit_page, roles=governors), methods=["GET"]),
        Route("/console/audit/verify", page(verify_audit, roles=governors), methods=["POST"]),
        Route("/console/audit/{seq:int}", page(audit_entry, roles=governors), methods=["GET"]),
        Route("/console/governance", page(governance_page, roles=governors), methods=["GET"]),
        Route(
            "/console/governance/organisation", page(governance_change(set_status), roles=operators), methods=["POST"]
        ),
        Route(
            "/console/governance/usecase", page(governance_change(revoke_use_case), roles=operators), methods=["POST"]
        ),
        Route("/console/governance/key", page(governance_change(key_change), roles=operators), methods=["POST"]),
        Route("/console/governance/policy", page(governance_change(policy_change), roles=operators), methods=["POST"]),
        Route("/console/fairness", page(fairness_page, roles=governors), methods=["GET"]),
        Route("/console/fairness/report", page(fairness_report, roles=governors), methods=["GET"]),
        Route("/console/transparency", page(transparency_page, roles=governors, everyone=True), methods=["GET"]),
        Route(
            "/console/transparency/report", page(transparency_report, roles=governors, everyone=True), methods=["GET"]
        ),
        Route("/console/users", page(users_page, roles=operators), methods=["GET"]),
        Route("/console/users", page(create_user, roles=operators), methods=["POST"]),
    ]


def _set_session_cookie(response: Response, request: Request, done: SignedIn) -> None:
    response.set_cookie(
        COOKIE,
        done.token,
        max_age=int(done.session.expires_at - done.session.created_at),
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https",
    )


def _global(user: ConsoleUser) -> bool:
    """A user of every organisation ('*'): the only kind that sees or changes what spans organisations."""
    return "*" in user.organisations


def _in_scope(user: ConsoleUser, organisation: str) -> bool:
    return _global(user) or (organisation != "*" and organisation in user.organisations)


def _require_scope(user: ConsoleUser, organisation: str) -> None:
    if not _in_scope(user, organisation):
        raise ResourceNotFoundException(f"There is no organisation {organisation[:64]} for you.")


def _actor(user: ConsoleUser) -> str:
    return f"console:{user.username}"


def _document(html: str) -> HTMLResponse:
    """A report page of its own (its plots are inline PNGs and its styles inline), framed only by the console."""
    response = HTMLResponse(html)
    response.headers.update(
        {
            **_SECURITY_HEADERS,
            "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            "frame-ancestors 'self'",
            "X-Frame-Options": "SAMEORIGIN",
        }
    )
    return response


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
