"""config.toml on disk: read with tomllib into typed settings, written back atomically keeping the user's layout.

Secrets never live here; provider keys go to the keyring (see `ccgate.local.secrets`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ccgate.core.settings import Config, config_from_dict, config_to_dict
from ccgate.errors import ConfigError
from ccgate.local.atomic import write_atomic


def load_config(path: Path) -> Config:
    """A missing file is the default config; a broken one is a ConfigError naming file and problem."""
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from exc
    try:
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path} is not valid TOML: {exc}", hint="fix or delete it; `ccgate config show` checks it"
        ) from exc
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", hint=exc.hint or "fix the file and try again") from exc


def _read_text(path: Path) -> str:
    """The file's text; empty when there is no file."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint="check the file's permissions") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint="fix or delete it, then try again") from exc


def _parse_raw(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint="fix or delete it, then try again") from exc


def _read_raw(path: Path) -> dict[str, Any]:
    return _parse_raw(path, _read_text(path))


_MISSING: Any = object()


def _merge(raw: dict[str, Any], old: dict[str, Any], new: dict[str, Any], *, top: bool = True) -> None:
    """Apply the change from `old` to `new` (both ccgate-owned views) to `raw` in place.

    Keys ccgate does not model are never in `old` or `new`, so they stay; keys whose owned value did not
    change keep the user's own spelling (`limit = 20` stays an integer). A section ccgate empties keeps its
    unknown keys; an entry it removes from a section (`[prices.MODEL]`, `[providers.NAME]`) goes whole.
    """
    for key in old.keys() - new.keys():
        before, here = old[key], raw.get(key)
        if top and isinstance(before, dict) and isinstance(here, dict):
            _merge(here, before, {}, top=False)
            if not here:
                del raw[key]
        else:
            raw.pop(key, None)
    for key, value in new.items():
        before, here = old.get(key, _MISSING), raw.get(key)
        if before == value:
            continue
        if isinstance(value, dict) and isinstance(here, dict):
            _merge(here, before if isinstance(before, dict) else {}, value, top=False)
        elif isinstance(value, list) and isinstance(here, list) and isinstance(before, list):
            raw[key] = _merge_list(here, before, value)
        else:
            raw[key] = value


def _merge_list(raw: list[Any], old: list[Any], new: list[Any]) -> list[Any]:
    """Arrays of tables (`[[budgets]]`): an unchanged entry keeps its raw table, a replaced one its unknown keys.

    An entry of `new` equal to an unclaimed entry of `old` is that entry; otherwise the entry at the same
    position (if unclaimed) is what was replaced in place.
    """
    claimed: set[int] = set()
    matches: list[int | None] = []
    for value in new:
        index = next((i for i, before in enumerate(old) if i not in claimed and before == value), None)
        if index is not None:
            claimed.add(index)
        matches.append(index)
    out: list[Any] = []
    for position, (value, index) in enumerate(zip(new, matches, strict=True)):
        if index is None and position < len(old) and position not in claimed and position < len(raw):
            index = position
            claimed.add(position)
        here = raw[index] if index is not None and index < len(raw) else None
        if isinstance(value, dict) and isinstance(here, dict) and index is not None and isinstance(old[index], dict):
            merged = dict(here)
            _merge(merged, old[index], value, top=False)
            out.append(merged)
        else:
            out.append(value)
    return out


def save_config(path: Path, config: Config) -> None:
    """Write `config` atomically (temp file + rename) so a crash never leaves half a config.

    Only what ccgate owns changes: keys and sections it does not model (`[sidecar] log_level`, a
    `[future_section]`) are kept as they are, and so are the file's comments and layout (tomlkit edits the
    document in place). tomli-w writes the same values plainly should tomlkit's text ever read back different.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _read_text(path)
    raw = _parse_raw(path, text)
    try:
        old = config_to_dict(config_from_dict(raw))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", hint=exc.hint or "fix the file and try again") from exc
    new = config_to_dict(config)
    data = _edited_text(text, old, new)
    _merge(raw, old, new)
    if data is None or _loads_or_none(data) != raw:
        import tomli_w

        data = tomli_w.dumps(raw)
    write_atomic(path, data)  # 0600, synced, as config files have always been written


def _edited_text(text: str, old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """`text` with the change from `old` to `new` applied in place, comments kept; None if tomlkit cannot."""
    import tomlkit

    try:
        document = tomlkit.parse(text)
        _merge(document, old, new)
        return tomlkit.dumps(document)
    except Exception:  # any tomlkit limitation: the caller writes the plain form instead
        return None


def _loads_or_none(text: str) -> dict[str, Any] | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
