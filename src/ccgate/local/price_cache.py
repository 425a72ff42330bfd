"""A small JSON file of price look-ups already made, so a command can skip importing genai-prices (~0.2 s).

Entries are keyed by everything their answer depends on, the installed price catalog included (`catalog_stamp`):
a new genai-prices, or a changed `[prices]` table, simply misses. The file is a cache: one that cannot be read
(missing, damaged, written by someone else) is ignored and rewritten, and one that cannot be written is left.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from typing import Any

MAX_ENTRIES = 64  # a handful of what-if targets; the oldest go first


def catalog_stamp() -> str | None:
    """Which genai-prices data is installed (its data file's path, size and mtime), found without importing it;
    None when it cannot be told (then nothing is cached)."""
    try:
        spec = find_spec("genai_prices")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data.py"
        try:
            stat = data.stat()
        except OSError:
            continue
        return f"{data}:{stat.st_size}:{stat.st_mtime_ns}"
    return None


def load(path: Path, key: str) -> Any:
    """The value stored under `key`, or None."""
    entries = _read(path)
    return entries.get(key)


def store(path: Path, key: str, value: Any) -> None:
    """Keep `value` under `key` (newest last, at most MAX_ENTRIES); failures to write are ignored."""
    from ccgate.local.atomic import write_atomic

    entries = _read(path)
    entries.pop(key, None)
    entries[key] = value
    while len(entries) > MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, json.dumps(entries, separators=(",", ":")) + "\n", fsync=False)
    except OSError:
        pass


def _read(path: Path) -> dict[str, Any]:
    """The entries, or {} for a file that is missing, damaged, or that another user could have written (a price
    from it would be believed: only the owner's own, private file counts)."""
    import os
    import stat

    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return {}
            data = json.loads(handle.read(1 << 20))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}
