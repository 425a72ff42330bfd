"""The dashboard's changes (POST): keys created, revoked and rotated, budgets and rate limits set.

Each goes through the same store method as the admin API with `actor=` the signed-in token's name, so the audit
log records it the same way; the role rules are the admin API's (viewer: nothing; team admin: its own team).
The CSRF token and the origin were checked by the app's middleware before any of these runs.
"""

from __future__ import annotations

from aiohttp import web

from ccgate.errors import InvalidRequestError, PermissionDeniedError
from ccgate.gateway import admin_input as check
from ccgate.gateway.ui.app import FORM, page, redirect, session_of, store
from ccgate.storage.gateway.dashboard import UiSession
from ccgate.storage.gateway.records import MAX_RATE_LIMIT, BudgetLevel, RateLevel, VirtualKey


def _allowed(session: UiSession, team_id: str) -> None:
    """Admins change anything, a team admin its own team; a viewer nothing."""
    if session.role == "admin" or (session.role == "team_admin" and session.team_id == team_id):
        return
    if session.role == "viewer":
        raise PermissionDeniedError(
            f"{session.token_name!r} signed in with a viewer token, which may not change anything",
            hint="sign in with an admin token to make changes",
        )
    raise PermissionDeniedError("a team admin may change only its own team", hint="ask an admin")


def _widening(session: UiSession, what: str) -> None:
    """The admin API's team_admin rule (it only adds and tightens): what loosens a limit is an admin's."""
    if session.role == "team_admin":
        raise PermissionDeniedError(
            f"{session.token_name!r} signed in with a team admin token, which may not {what}",
            hint="a team admin may only add or tighten limits; ask an admin to raise or remove one",
        )


def _form(request: web.Request) -> dict[str, str]:
    form: dict[str, str] = request[FORM]
    return form


def _field(form: dict[str, str], name: str) -> str:
    return check.text(name, form.get(name, ""))


def _limit(form: dict[str, str], name: str) -> int | None:
    value = form.get(name, "").strip().replace(",", "").replace("_", "")
    if not value:
        return None
    if not value.isdigit() or int(value) > MAX_RATE_LIMIT:
        raise InvalidRequestError(
            f"{name} must be a whole number from 0 to {MAX_RATE_LIMIT}, or empty for no limit", hint="e.g. 60"
        )
    return int(value)


async def _key(request: web.Request) -> VirtualKey:
    found = await store(request).get_key(request.match_info["id"])
    _allowed(session_of(request), found.team_id)
    return found


async def create_key(request: web.Request) -> web.StreamResponse:
    """Its secret is in this response only: the page is not cached (no-store) and never shows it again."""
    session = session_of(request)
    form = _form(request)
    s = store(request)
    team = await s.get_team(_field(form, "team"))
    _allowed(session, team.id)
    mode = check.choice("proxy", "report")("mode", form.get("mode", "proxy"))
    if mode == "report":
        _widening(session, "create a report-mode key")
    created = await s.create_key(team=team.id, name=_field(form, "name").strip(), mode=mode, actor=session.token_name)
    return page(request, "key_created.html", title="Key created", key=created.key, secret=created.plaintext,
                team_name=team.name, rotated=False)  # fmt: skip


async def rotate_key(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    found = await _key(request)
    grace = check.grace("grace", _form(request).get("grace", "1d") or "1d")
    if grace > check.TEAM_ADMIN_MAX_GRACE:
        _widening(session, check.LONG_GRACE)
    s = store(request)
    created = await s.rotate_key(found.id, grace=grace, actor=session.token_name)
    team = await s.get_team(found.team_id)
    return page(request, "key_created.html", title="Key rotated", key=created.key, secret=created.plaintext,
                team_name=team.name, rotated=True)  # fmt: skip


async def revoke_key(request: web.Request) -> web.StreamResponse:
    found = await _key(request)
    await store(request).revoke_key(found.id, actor=session_of(request).token_name)
    return redirect(f"/ui/keys/{found.id}?done=revoked")


async def _budget(request: web.Request, level: BudgetLevel, target_id: str) -> None:
    form = _form(request)
    await store(request).create_budget(
        level=level,
        target=target_id,
        limit_nanos=check.usd_nanos("amount", form.get("amount", "")),
        period=_field(form, "period").strip(),
        calendar=form.get("rolling") != "1",
        actor=session_of(request).token_name,
    )


async def _rate_limit(request: web.Request, level: RateLevel, target_id: str) -> None:
    form = _form(request)
    await store(request).set_rate_limit(
        level=level,
        target=target_id,
        rpm=_limit(form, "rpm"),
        tpm=_limit(form, "tpm"),
        actor=session_of(request).token_name,
    )


async def key_budget(request: web.Request) -> web.StreamResponse:
    found = await _key(request)
    await _budget(request, BudgetLevel.KEY, found.id)
    return redirect(f"/ui/keys/{found.id}?done=budget")


async def key_rate_limit(request: web.Request) -> web.StreamResponse:
    found = await _key(request)
    await _rate_limit(request, RateLevel.KEY, found.id)
    return redirect(f"/ui/keys/{found.id}?done=ratelimit")


async def _team_id(request: web.Request) -> tuple[str, str]:
    found = await store(request).get_team(request.match_info["name"])
    _allowed(session_of(request), found.id)
    return found.id, found.name


async def team_budget(request: web.Request) -> web.StreamResponse:
    team_id, name = await _team_id(request)
    await _budget(request, BudgetLevel.TEAM, team_id)
    return redirect(f"/ui/teams/{_quote(name)}?done=budget")


async def team_rate_limit(request: web.Request) -> web.StreamResponse:
    team_id, name = await _team_id(request)
    await _rate_limit(request, RateLevel.TEAM, team_id)
    return redirect(f"/ui/teams/{_quote(name)}?done=ratelimit")


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
