"""Names people read (customers, teams, keys, admin tokens, providers): when two are one name."""

from __future__ import annotations

import unicodedata


def fold_name(value: str) -> str:
    """What two names that people would take for one have in common (`Core`, `core`, `ｃｏｒｅ`, a decomposed `é`):
    compatibility form, case folded. The gateway stores it beside each name under a unique index, so the database
    itself refuses the second of two such names, even when both are created at the same moment."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold()).strip()
