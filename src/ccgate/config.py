"""config.toml: read with tomllib into typed settings, written back atomically with tomli-w.

Secrets never live here; provider keys go to the keyring (see `secrets`).
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ccgate.errors import ConfigError

DEFAULT_PORT = 8787
DEFAULT_MAX_BODY_MB = 64
MAX_BUDGET_WAIT_SECONDS = 3600
KNOWN_TIERS = ("opus", "sonnet", "haiku")


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_mb: int = DEFAULT_MAX_BODY_MB
    budget_wait_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """A provider entry from config: overrides of a built-in one, or a custom provider."""

    name: str
    kind: str | None = None
    base_url: str | None = None
    supports_stream_usage: bool | None = None


@dataclass(frozen=True, slots=True)
class TierSettings:
    """A tier's route: targets are `provider/model` strings, primary first."""

    tier: str
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """USD per million tokens; None means 'take it from the catalog'."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write_5m: Decimal | None = None
    cache_write_1h: Decimal | None = None


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    period: str
    limit_usd: Decimal
    project: str | None = None
    warn_at: Decimal = Decimal("0.8")


@dataclass(frozen=True, slots=True)
class Config:
    sidecar: SidecarSettings = field(default_factory=SidecarSettings)
    providers: dict[str, ProviderSettings] = field(default_factory=dict)
    tiers: dict[str, TierSettings] = field(default_factory=dict)
    model_rules: dict[str, str] = field(default_factory=dict)
    prices: dict[str, PriceOverride] = field(default_factory=dict)
    budgets: tuple[BudgetSettings, ...] = ()
    timezone: str | None = None
    gateway_url: str | None = None
    # the first day of a week in `cost --by week` ("monday" .. "sunday"); None: Monday
    week_start: str | None = None


def resolve_timezone(name: str | None = None, environ: Mapping[str, str] | None = None) -> tzinfo:
    """The user's timezone: the configured IANA name, else TZ, else /etc/localtime, else UTC."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"timezone {name!r} is not a known IANA timezone", hint="use a name like Europe/Berlin or UTC"
            ) from exc
    env = os.environ if environ is None else environ
    tz_env = env.get("TZ", "").lstrip(":")
    if tz_env:
        try:
            return ZoneInfo(tz_env)
        except (ZoneInfoNotFoundError, ValueError):
            # A POSIX TZ string such as `XYZ-5` or `EST5EDT,M3.2.0,M11.1.0`: honour it as the C library does.
            return _posix_timezone(tz_env, env)
    localtime = Path("/etc/localtime")
    try:
        target = str(localtime.resolve())
        if "zoneinfo/" in target:
            return ZoneInfo(target.split("zoneinfo/", 1)[1])
        with localtime.open("rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ZoneInfoNotFoundError, ValueError):
        pass
    local = datetime.now().astimezone().tzinfo
    return local if local is not None else UTC


_POSIX_STD = re.compile(r"^(?P<name>[A-Za-z]{3,}|<[+-]?[A-Za-z0-9]+>)(?P<sign>[+-]?)(?P<h>\d{1,2})(?::(?P<m>\d{2}))?$")


def _posix_timezone(text: str, env: Mapping[str, str]) -> tzinfo:
    """A POSIX TZ string as a fixed offset: parsed when it has no DST rule (`XYZ-5` is UTC+5: POSIX counts
    west-positive), else the offset the C library computes now (when TZ is this process's own)."""
    match = _POSIX_STD.match(text)
    if match is not None:
        offset = timedelta(hours=int(match["h"]), minutes=int(match["m"] or 0))
        if offset < timedelta(hours=24):
            return timezone(offset if match["sign"] == "-" else -offset, match["name"].strip("<>"))
    if env.get("TZ", "").lstrip(":") == os.environ.get("TZ", "").lstrip(":"):
        local = datetime.now().astimezone().tzinfo
        if local is not None:
            return local
    return UTC


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


def _usd(value: Any, where: str) -> Decimal:
    """A USD amount from the file, held to the same rules as one typed on the command line (`ccgate.money`)."""
    from ccgate.money import AmountError, usd_from_toml

    try:
        return usd_from_toml(value)
    except AmountError as exc:
        raise ConfigError(f"{where} is not a valid USD amount ({exc.reason}), got {value!r}", hint=exc.hint) from exc


def _number(value: Any, where: str, *, low: Decimal, high: Decimal, low_inclusive: bool = True) -> Decimal:
    """A plain number within bounds (fractions, seconds): never NaN, infinity or absurdly large."""
    expected = f"a number from {low} {'' if low_inclusive else '(exclusive) '}to {high}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where} must be {expected}, got {value!r}")
    try:
        # float -> repr first, so 0.1 stays 0.1 rather than its binary neighbour
        result = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation as exc:
        raise ConfigError(f"{where} must be {expected}, got {value!r}") from exc
    if not result.is_finite() or result > high or result < low or (result == low and not low_inclusive):
        raise ConfigError(f"{where} must be {expected}, got {value!r}")
    return result


def _str(value: Any, where: str, expected: str = "a string") -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be {expected}, got {value!r}")
    return value


def _optional_str(table: dict[str, Any], key: str, where: str, expected: str = "a string") -> str | None:
    value = table.get(key)
    return None if value is None else _str(value, f"{where}.{key}", expected)


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table")
    return value


# The keys the loader reads, table by table (tables of names -- providers, tiers, prices, model_rules -- take any
# name; their entries hold these keys). Where each key is its dataclass field's name, the fields give the list.
TOP_KEYS = ("sidecar", "providers", "tiers", "model_rules", "prices", "budgets", "timezone", "gateway", "week_start")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SIDECAR_KEYS = tuple(f.name for f in fields(SidecarSettings))
PROVIDER_KEYS = tuple(f.name for f in fields(ProviderSettings) if f.name != "name")
TIER_KEYS = ("targets",)
PRICE_KEYS = tuple(f.name for f in fields(PriceOverride))
BUDGET_KEYS = ("period", "limit", "project", "warn_at")
GATEWAY_KEYS = ("url",)


def _check_spelling(table: Any, known: tuple[str, ...], where: str) -> None:
    """A key that is not one ccgate reads but close to one (`[[budget]]`, `timezon`, `prot`) is a typo: left
    alone, the default stays in force -- and a misspelt budget is never enforced -- without a word.

    Keys unlike every known one are the user's own (a `note` on a budget, a `[future_section]`): they are
    allowed and kept when ccgate edits the file. A value that is not a table is left to the caller's own check.
    """
    if not isinstance(table, dict):
        return
    for key in table:
        if key in known:
            continue
        import difflib  # only for a key it does not know: the status line loads the config on every refresh

        close = difflib.get_close_matches(key, known, n=1)
        if close:
            raise ConfigError(
                f"{where}{key} is not a ccgate setting",
                hint=f"did you mean {where}{close[0]}? (known: {', '.join(known)})",
            )


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Every value is type-checked; a wrong one is a ConfigError naming the key and what was expected, and a
    misspelt key one naming the key it resembles."""
    from ccgate.providers import (
        BUILTIN,
        base_url_env_var,
        env_clash,
        key_env_var,
        validate_base_url,
        validate_provider_name,
    )

    _check_spelling(raw, TOP_KEYS, "")
    side = _table(raw, "sidecar")
    _check_spelling(side, SIDECAR_KEYS, "sidecar.")
    port = side.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"sidecar.port must be a port number, got {port!r}")
    max_body = side.get("max_body_mb", DEFAULT_MAX_BODY_MB)
    if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body < 1:
        raise ConfigError(f"sidecar.max_body_mb must be a positive integer, got {max_body!r}")
    host = side.get("host", "127.0.0.1")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"sidecar.host must be a loopback address, got {host!r}", hint="use 127.0.0.1")
    wait = _number(
        side.get("budget_wait_seconds", 30),
        "sidecar.budget_wait_seconds",
        low=Decimal(0),
        high=Decimal(MAX_BUDGET_WAIT_SECONDS),
    )
    sidecar = SidecarSettings(host=host, port=port, max_body_mb=max_body, budget_wait_seconds=float(wait))

    providers: dict[str, ProviderSettings] = {}
    for name, entry in _table(raw, "providers").items():
        where = f"providers.{name}"
        if not isinstance(entry, dict):
            raise ConfigError(f"[{where}] must be a table")
        _check_spelling(entry, PROVIDER_KEYS, f"{where}.")
        validate_provider_name(name)
        kind = entry.get("kind")
        if kind is not None and kind not in ("anthropic", "openai"):
            raise ConfigError(f"{where}.kind must be 'anthropic' or 'openai', got {kind!r}")
        base_url = _optional_str(entry, "base_url", where, "an http(s) URL string")
        if base_url is not None:
            base_url = validate_base_url(base_url, f"{where}.base_url", provider=name)
        stream_usage = entry.get("supports_stream_usage")
        if stream_usage is not None and not isinstance(stream_usage, bool):
            raise ConfigError(f"{where}.supports_stream_usage must be true or false, got {stream_usage!r}")
        providers[name] = ProviderSettings(name=name, kind=kind, base_url=base_url, supports_stream_usage=stream_usage)
    for name in providers:  # a hand-edited file can hold `my-llm` and `my_llm`; `provider add` refuses that
        clash = env_clash(name, (*BUILTIN, *providers))
        if clash is not None:
            raise ConfigError(
                f"providers.{name} and {clash} would share {key_env_var(name)} and {base_url_env_var(name)}",
                hint="rename one of them in the config file (names must differ by more than '-' and '_')",
            )

    tiers: dict[str, TierSettings] = {}
    for tier, entry in _table(raw, "tiers").items():
        _check_spelling(entry, TIER_KEYS, f"tiers.{tier}.")
        targets = entry.get("targets") if isinstance(entry, dict) else None
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise ConfigError(
                f"tiers.{tier}.targets must be a non-empty list of 'provider/model' strings, got {targets!r}"
            )
        tiers[tier] = TierSettings(tier=tier, targets=tuple(targets))

    model_rules = {
        key: _str(value, f"model_rules.{key}", "a tier name string (opus, sonnet, haiku)")
        for key, value in _table(raw, "model_rules").items()
    }

    prices: dict[str, PriceOverride] = {}
    for model, entry in _table(raw, "prices").items():
        _check_spelling(entry, PRICE_KEYS, f"prices.{model}.")
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise ConfigError(f"prices.{model} needs at least `input` and `output` (USD per million tokens)")

        def optional(key: str, entry: dict[str, Any] = entry, model: str = model) -> Decimal | None:
            return _usd(entry[key], f"prices.{model}.{key}") if key in entry else None

        prices[model] = PriceOverride(
            input=_usd(entry["input"], f"prices.{model}.input"),
            output=_usd(entry["output"], f"prices.{model}.output"),
            cache_read=optional("cache_read"),
            cache_write_5m=optional("cache_write_5m"),
            cache_write_1h=optional("cache_write_1h"),
        )

    budgets_raw = raw.get("budgets", [])
    if not isinstance(budgets_raw, list):
        raise ConfigError("budgets must be an array of tables ([[budgets]])")
    budgets = []
    for index, entry in enumerate(budgets_raw):
        where = f"budgets[{index}]"
        _check_spelling(entry, BUDGET_KEYS, f"{where}.")
        if not isinstance(entry, dict) or "period" not in entry or "limit" not in entry:
            raise ConfigError(f"{where} needs `period` and `limit`")
        budgets.append(
            BudgetSettings(
                period=_str(entry["period"], f"{where}.period", "a period string such as 'daily' or '1h'"),
                limit_usd=_usd(entry["limit"], f"{where}.limit"),
                project=_optional_str(entry, "project", where, "a project directory string"),
                warn_at=_number(
                    entry.get("warn_at", "0.8"),
                    f"{where}.warn_at",
                    low=Decimal(0),
                    high=Decimal(1),
                    low_inclusive=False,
                ),
            )
        )

    timezone = raw.get("timezone")
    if timezone is not None:
        resolve_timezone(_str(timezone, "timezone", "an IANA timezone name such as 'Europe/Berlin'"))
    gateway = _table(raw, "gateway")
    _check_spelling(gateway, GATEWAY_KEYS, "gateway.")
    week_start = raw.get("week_start")
    if week_start is not None:
        week_start = _str(week_start, "week_start", "a weekday name such as 'monday' or 'sunday'").lower()
        if week_start not in WEEKDAYS:
            raise ConfigError(f"week_start {week_start!r} is not a weekday", hint=f"use one of: {', '.join(WEEKDAYS)}")
    return Config(
        sidecar=sidecar,
        providers=providers,
        tiers=tiers,
        model_rules=model_rules,
        prices=prices,
        budgets=tuple(budgets),
        timezone=timezone,
        gateway_url=_optional_str(gateway, "url", "gateway", "a URL string"),
        week_start=week_start,
    )


def _plain(amount: Decimal) -> str:
    """Decimals go to TOML as positional strings (`0.0000001`, never `1E-7`), which `_usd` reads back exactly."""
    return format(amount, "f")


def config_to_dict(config: Config) -> dict[str, Any]:
    """The keys ccgate owns, as TOML values; `save_config` merges them into whatever else the file holds."""
    out: dict[str, Any] = {}
    default_sidecar = SidecarSettings()
    if config.sidecar != default_sidecar:
        out["sidecar"] = {key: getattr(config.sidecar, key) for key in SIDECAR_KEYS}
    if config.timezone:
        out["timezone"] = config.timezone
    if config.week_start:
        out["week_start"] = config.week_start
    if config.providers:
        out["providers"] = {
            name: {key: value for key in PROVIDER_KEYS if (value := getattr(p, key)) is not None}
            for name, p in config.providers.items()
        }
    if config.tiers:
        out["tiers"] = {name: {"targets": list(t.targets)} for name, t in config.tiers.items()}
    if config.model_rules:
        out["model_rules"] = dict(config.model_rules)
    if config.prices:
        out["prices"] = {
            model: {key: _plain(value) for key in PRICE_KEYS if (value := getattr(p, key)) is not None}
            for model, p in config.prices.items()
        }
    if config.budgets:
        out["budgets"] = [
            {
                k: v
                for k, v in (
                    ("period", b.period),
                    ("limit", _plain(b.limit_usd)),
                    ("project", b.project),
                    ("warn_at", _plain(b.warn_at)),
                )
                if v is not None
            }
            for b in config.budgets
        ]
    if config.gateway_url:
        out["gateway"] = {"url": config.gateway_url}
    return out


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
    _write_atomic(path, data.encode("utf-8"))


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


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
