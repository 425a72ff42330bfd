"""The dashboard sub-application at /ui: sign-in, server-side sessions, CSRF, security headers, error pages.

Server-rendered HTML with no JavaScript at all, so the Content-Security-Policy can forbid scripts outright
(`default-src 'none'`): an injected tag can neither run nor fetch. Sessions live in the database
(`ui_sessions`: only the SHA-256 of the cookie), so signing out, or revoking the admin token a session signed in
with, ends it on every instance at once. Every POST carries the session's CSRF token and must come from this
origin (`Origin` and `Sec-Fetch-Site`); `SameSite=Strict` on the cookie is a third line.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from importlib import resources
from urllib.parse import parse_qsl

from aiohttp import web

from ccgate.core.records import utcnow
from ccgate.errors import AuthenticationError, CcgateError, InvalidRequestError, PermissionDeniedError
from ccgate.gateway import keys
from ccgate.gateway.ui.render import render
from ccgate.storage.gateway import dashboard
from ccgate.storage.gateway.dashboard import UiSession
from ccgate.storage.gateway.store import GatewayStore

log = logging.getLogger("ccgate.gateway.ui")

COOKIE = "ccgate_ui"
SESSION_TTL = timedelta(hours=12)
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 32
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # not no-referrer: under it a browser sends `Origin: null` with a form, which the origin check refuses
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# pages hold spend, names and (once) a new key: never kept by a browser or a proxy
NO_STORE = "no-store"

UI_SESSION = web.RequestKey("ui_session", UiSession)
FORM = web.RequestKey("ui_form", dict)
# paths that work without a session
_STATIC = {"ui.css": "text/css", "favicon.svg": "image/svg+xml"}
_OPEN = frozenset({"/ui/login", *(f"/ui/static/{name}" for name in _STATIC)})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def store(request: web.Request) -> GatewayStore:
    return request.config_dict[keys.STORE]


def redirect(location: str) -> web.Response:
    """303 to a page of the dashboard (after a change: reloading the page then does not post again)."""
    return web.Response(status=303, headers={"Location": location})


def session_of(request: web.Request) -> UiSession:
    return request[UI_SESSION]


def page(request: web.Request, template: str, *, status: int = 200, **context: object) -> web.Response:
    """A rendered page with what every page shows (who is signed in, their CSRF token, may they change)."""
    session = request.get(UI_SESSION)
    html = render(
        template,
        session=session,
        can_change=session is not None and session.role != "viewer",
        csrf=session.csrf_secret if session is not None else "",
        path=request.path,
        **context,
    )
    return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)


# --- the boundary: headers, timing, sessions, CSRF, errors ---------------------------------------------------------


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await _guarded(request, handler)
    except web.HTTPException as exception:  # redirects and aiohttp's own 404/405
        if exception.status >= 400:
            response = _error_page(request, exception.status, exception.reason, "go back to the overview")
        else:
            response = web.Response(status=exception.status, headers={"Location": exception.headers["Location"]})
    except CcgateError as error:
        response = _error_page(request, error.status, error.message, error.hint or "")
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", NO_STORE)
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


def _error_page(request: web.Request, status: int, message: str, hint: str) -> web.Response:
    return page(request, "error.html", status=status, status_code=status, message=message, hint=hint)


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "POST":
        check_origin(request)
    if request.path in _OPEN:
        return await handler(request)
    session = await _session(request)
    if session is None:
        if request.method == "GET":
            raise web.HTTPSeeOther("/ui/login")
        raise AuthenticationError("you are not signed in (or your session ended)", hint="sign in again at /ui/login")
    request[UI_SESSION] = session
    if request.method == "POST" and session.role == "viewer" and request.path != "/ui/logout":
        raise PermissionDeniedError(
            f"{session.token_name!r} signed in with a viewer token, which may not change anything",
            hint="sign in with an admin token to make changes",
        )
    if request.method == "POST":
        form = await read_form(request)
        given = form.get("csrf", "")
        if not hmac.compare_digest(given.encode("utf-8"), session.csrf_secret.encode("utf-8")):
            raise PermissionDeniedError(
                "this form's security token is missing or stale", hint="reload the page and submit it again"
            )
        request[FORM] = form
    return await handler(request)


def check_origin(request: web.Request) -> None:
    """A change must come from a page of this origin: a browser says where a form was posted from."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        raise PermissionDeniedError(
            f"a form posted from another site ({site}) is refused", hint="use the dashboard's own pages"
        )
    origin = request.headers.get("Origin")
    if origin is not None and _origin_host(origin) != request.host.lower():
        raise PermissionDeniedError(
            "a form posted from another origin is refused",
            hint="use the dashboard's own pages (behind a proxy, it must pass the Host header on)",
        )


def _origin_host(origin: str) -> str | None:
    """`https://gw.example` -> `gw.example`. The host (and port) only: behind a TLS-terminating proxy the gateway
    sees http while the browser's origin is https; the CSRF token and SameSite hold either way."""
    scheme, sep, host = origin.partition("://")
    if not sep or scheme not in ("http", "https") or not host or "/" in host:
        return None
    return host.lower()


def over_https(request: web.Request) -> bool:
    """The browser is on https: the connection is TLS, or its form came from an https origin (a TLS proxy)."""
    return request.secure or request.headers.get("Origin", "").startswith("https://")


async def read_form(request: web.Request) -> dict[str, str]:
    """A small urlencoded form: size and field count capped, text without control characters (newlines
    aside), each field once."""
    if request.get(FORM) is not None:
        return request[FORM]
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise InvalidRequestError("the form is too large", hint="send shorter values")
    raw = await request.content.read(MAX_FORM_BYTES + 1)
    if len(raw) > MAX_FORM_BYTES:
        raise InvalidRequestError("the form is too large", hint="send shorter values")
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequestError("the form could not be read", hint="submit it from the dashboard's page") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidRequestError(f"the field {name!r} is given twice", hint="submit the dashboard's own form")
        if any((ord(c) < 32 and c not in "\r\n\t") or ord(c) == 127 for c in value) or not _utf8(value):
            raise InvalidRequestError(f"the field {name!r} holds control characters", hint="type plain text")
        form[name] = value
    request[FORM] = form
    return form


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _session(request: web.Request) -> UiSession | None:
    cookie = request.cookies.get(COOKIE, "")
    if not cookie:
        return None
    now = utcnow()
    bootstrap = request.config_dict.get(keys.BOOTSTRAP_ADMIN_TOKEN)
    from ccgate.gateway.admin import BOOTSTRAP_ACTOR

    db = store(request).db
    found = await dashboard.find_session(db, cookie, now=now, bootstrap_name=BOOTSTRAP_ACTOR if bootstrap else None)
    if found is not None:
        await dashboard.touch_session(db, found, now=now)
    return found


# --- sign in and out -------------------------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.StreamResponse:
    if await _session(request) is not None:
        raise web.HTTPSeeOther("/ui/")
    return page(request, "login.html", message=None)


async def login(request: web.Request) -> web.StreamResponse:
    """Any admin token signs in: the environment's, or a named one of any role (its role then applies)."""
    from ccgate.gateway.admin import principal_for

    form = await read_form(request)
    token = form.get("token", "").strip()
    principal = await principal_for(request, token) if token and len(token) <= 512 else None
    if principal is None:
        return page(request, "login.html", status=401, message="That admin token is wrong or revoked.")
    db = store(request).db
    now = utcnow()
    await dashboard.delete_expired_sessions(db, now=now)
    cookie, _ = await dashboard.create_session(
        db,
        token_name=principal.name,
        role=principal.role.value,
        team_id=principal.team_id,
        now=now,
        ttl=SESSION_TTL,
    )
    log.info("dashboard sign-in by %s (%s)", principal.name, principal.role.value)
    response = redirect("/ui/")
    response.set_cookie(
        COOKIE,
        cookie,
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=over_https(request),
        max_age=int(SESSION_TTL.total_seconds()),
    )
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """Deletes the session row: the cookie is worthless from now on, wherever a copy of it is."""
    await dashboard.delete_session(store(request).db, session_of(request).id_hash)
    response = redirect("/ui/login")
    response.del_cookie(COOKIE, path="/ui")
    return response


async def static(request: web.Request) -> web.StreamResponse:
    """The stylesheet and the icon, shipped in the package (nothing is fetched from elsewhere)."""
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound(reason="no such file")
    body = resources.files("ccgate.gateway.ui").joinpath("static", name).read_bytes()
    return web.Response(
        body=body, content_type=_STATIC[name], charset="utf-8", headers={"Cache-Control": "public, max-age=300"}
    )


async def not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound(reason="no such page")


async def to_overview(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/ui/")


def create_ui_app() -> web.Application:
    """The /ui sub-application; handlers reach the store through `request.config_dict[keys.STORE]`."""
    from ccgate.gateway.ui import changes, pages

    app = web.Application(middlewares=[middleware])
    r = app.router
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/static/{name}", static)
    r.add_get("/", pages.overview)
    r.add_get("/teams", pages.teams)
    r.add_get("/teams/{name}", pages.team)
    r.add_post("/teams/{name}/budget", changes.team_budget)
    r.add_post("/teams/{name}/ratelimit", changes.team_rate_limit)
    r.add_get("/keys", pages.keys_page)
    r.add_post("/keys", changes.create_key)
    r.add_get("/keys/{id}", pages.key)
    r.add_post("/keys/{id}/revoke", changes.revoke_key)
    r.add_post("/keys/{id}/rotate", changes.rotate_key)
    r.add_post("/keys/{id}/budget", changes.key_budget)
    r.add_post("/keys/{id}/ratelimit", changes.key_rate_limit)
    r.add_get("/requests", pages.requests_page)
    r.add_get("/requests/{key_id}/{id}", pages.request_detail)
    r.add_get("/audit", pages.audit)
    r.add_route("*", "/{tail:.*}", not_found)
    return app
