"""Text from outside (ledger, config, upstream errors) made safe to print on a terminal.

A model name or an upstream `error.type` is whatever a provider or a local user wrote; printed raw, an ESC
sequence could clear the screen, retitle the window or forge a line, and a bidi override could reorder what is
shown. Every CLI printer and the statusline pass text through `printable`; `--json`/`--csv` keep exact data.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL; bidi embeddings, overrides and isolates (and the marks); line and paragraph
# separators; lone surrogates (which would make the write itself fail with a traceback).
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_OR_NEWLINE = re.compile(_UNSAFE.pattern[:-1] + "\n]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, newlines: bool = False) -> str:
    """`text` with every control, bidi and separator character shown as an escape (`\\x1b`, `\\u202e`).

    `newlines=True` keeps `\\n` as a line break (for whole messages); a single field (a model name, an
    error type) escapes it too, so that it cannot forge a line of its own.
    """
    pattern = _UNSAFE if newlines else _UNSAFE_OR_NEWLINE
    if pattern.search(text) is None:
        return text
    return pattern.sub(_escape, text)


def terminal_safe_json(document: str) -> str:
    """A JSON text whose strings hold no raw C1, bidi or separator character: each becomes a `\\uXXXX` escape.

    `json.dumps(..., ensure_ascii=False)` escapes only C0 controls; the data decoded stays exactly the same.
    """
    if _UNSAFE.search(document) is None:
        return document
    return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", document)
