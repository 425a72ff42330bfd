"""The sidecar's word to the org gateway about a proxied row: its project, session and launch.

In proxy mode the sidecar's row and the gateway's are one request (`x-ccgate-request-id`); these headers let
the gateway's row carry the same project, session and launch, so `gateway report --by project` attributes
proxied requests as it does synced ones. The gateway consumes them and never forwards them to a provider.
Header values must be ASCII: the project (a path, any Unicode) travels percent-encoded. The gateway trusts
none of it further than a label: a value too long, undecodable or with control characters is dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from urllib.parse import quote, unquote

PROJECT_HEADER = "x-ccgate-project"
SESSION_HEADER = "x-ccgate-session"
LAUNCH_HEADER = "x-ccgate-launch"
HEADERS = frozenset({PROJECT_HEADER, SESSION_HEADER, LAUNCH_HEADER})

# as `/v1/usage` bounds the same fields (gateway/ingest.py)
MAX_PROJECT = 4096
MAX_ID = 200


def encode(project: str | None, session_id: str | None, launch_id: str | None) -> dict[str, str]:
    """The headers for one row; a field that is empty or would not be accepted is left out."""
    headers: dict[str, str] = {}
    if project and len(project) <= MAX_PROJECT and _clean(project):
        # a path that is not UTF-8 (a lone surrogate from the file system) cannot be sent: it is left out
        with contextlib.suppress(UnicodeEncodeError):
            headers[PROJECT_HEADER] = quote(project, safe="/:@-._~")
    if session_id and _plain_id(session_id):
        headers[SESSION_HEADER] = session_id
    if launch_id and _plain_id(launch_id):
        headers[LAUNCH_HEADER] = launch_id
    return headers


def decode(headers: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    """(project, session id, launch id) from a request's headers; None for each that is missing or unusable."""
    project = None
    raw = headers.get(PROJECT_HEADER)
    if raw and raw.isascii() and len(raw) <= MAX_PROJECT * 12:
        try:
            text = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            text = ""
        if text and len(text) <= MAX_PROJECT and _clean(text):
            project = text
    session = headers.get(SESSION_HEADER)
    launch = headers.get(LAUNCH_HEADER)
    return (
        project,
        session if session and _plain_id(session) else None,
        launch if launch and _plain_id(launch) else None,
    )


def _clean(text: str) -> bool:
    """No control characters (C0, DEL, C1): a label in reports and terminals."""
    return not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def _plain_id(value: str) -> bool:
    """ASCII, printable, no spaces, bounded, and not something that reads like a secret."""
    return (
        len(value) <= MAX_ID
        and value.isascii()
        and value.isprintable()
        and " " not in value
        and not value.lower().startswith(("sk-", "cg-admin-"))
    )
