"""The settings config.toml holds, as typed values, and their validation; reading and writing the file is
`ccgate.local.config_file`'s job.

Secrets never live here; provider keys go to the keyring (see `ccgate.local.secrets`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ccgate.core.loopback import LOOPBACK_NAMES
from ccgate.errors import ConfigError

DEFAULT_PORT = 8787
DEFAULT_MAX_BODY_MB = 64
# a whole (non-streamed) reply from a provider; past this it is dropped, not buffered (streams are never buffered)
DEFAULT_MAX_REPLY_MB = 64
MAX_BUDGET_WAIT_SECONDS = 3600
KNOWN_TIERS = ("opus", "sonnet", "haiku")


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_mb: int = DEFAULT_MAX_BODY_MB
    max_reply_mb: int = DEFAULT_MAX_REPLY_MB
    budget_wait_seconds: float = 30.0
    # An upstream stream must send its response headers and first event within this (a long thinking request
    # still gets message_start in seconds); past it, the next target of the route is tried.
    first_byte_timeout_seconds: float = 60.0
    # Silence allowed between two events of a stream once it runs (Anthropic sends `ping` every ~15 s).
    stream_idle_timeout_seconds: float = 120.0
    # A connection must deliver its first request head within this; idle keep-alive connections close after
    # keepalive_timeout_seconds (and a partial head on one does not extend it).
    header_timeout_seconds: float = 10.0
    keepalive_timeout_seconds: float = 75.0
    # Connections that have not shown the local token yet; past this many the oldest of them is closed.
    max_unauthenticated_connections: int = 128


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
    # `[statusline] block = true`: the status line also shows the 5-hour window in progress
    statusline_block: bool = False


def named_zone(name: str) -> tzinfo:
    """An IANA zone by name, or a ConfigError that says what a valid name looks like."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"timezone {name!r} is not a known IANA timezone", hint="use a name like Europe/Berlin or UTC"
        ) from exc


def _usd(value: Any, where: str) -> Decimal:
    """A USD amount from the file, held to the same rules as one typed on the command line (`ccgate.core.money`)."""
    from ccgate.core.money import AmountError, usd_from_toml

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
TOP_KEYS = (
    "sidecar",
    "providers",
    "tiers",
    "model_rules",
    "prices",
    "budgets",
    "timezone",
    "gateway",
    "week_start",
    "statusline",
)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SIDECAR_KEYS = tuple(f.name for f in fields(SidecarSettings))
PROVIDER_KEYS = tuple(f.name for f in fields(ProviderSettings) if f.name != "name")
TIER_KEYS = ("targets",)
PRICE_KEYS = tuple(f.name for f in fields(PriceOverride))
BUDGET_KEYS = ("period", "limit", "project", "warn_at")
GATEWAY_KEYS = ("url",)
STATUSLINE_KEYS = ("block",)


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


# Timeout settings of [sidecar]: (low exclusive, high) seconds. A timeout of zero would refuse every request.
_SIDECAR_TIMEOUTS = {
    "first_byte_timeout_seconds": 3600,
    "stream_idle_timeout_seconds": 3600,
    "header_timeout_seconds": 3600,
    "keepalive_timeout_seconds": 86400,
}


def _connection_settings(side: dict[str, Any]) -> dict[str, Any]:
    """The [sidecar] timeouts and the unauthenticated-connection cap, checked; absent keys keep the defaults."""
    out: dict[str, Any] = {}
    for key, high in _SIDECAR_TIMEOUTS.items():
        if key in side:
            value = _number(side[key], f"sidecar.{key}", low=Decimal(0), high=Decimal(high), low_inclusive=False)
            out[key] = float(value)
    if "max_unauthenticated_connections" in side:
        cap = side["max_unauthenticated_connections"]
        if not isinstance(cap, int) or isinstance(cap, bool) or not 1 <= cap <= 100_000:
            raise ConfigError(
                f"sidecar.max_unauthenticated_connections must be an integer from 1 to 100000, got {cap!r}"
            )
        out["max_unauthenticated_connections"] = cap
    return out


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Every value is type-checked; a wrong one is a ConfigError naming the key and what was expected, and a
    misspelt key one naming the key it resembles."""
    from ccgate.core.providers import (
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
    max_reply = side.get("max_reply_mb", DEFAULT_MAX_REPLY_MB)
    if not isinstance(max_reply, int) or isinstance(max_reply, bool) or not 1 <= max_reply <= 4096:
        raise ConfigError(f"sidecar.max_reply_mb must be an integer from 1 to 4096, got {max_reply!r}")
    host = side.get("host", "127.0.0.1")
    if host not in LOOPBACK_NAMES:
        raise ConfigError(f"sidecar.host must be a loopback address, got {host!r}", hint="use 127.0.0.1")
    wait = _number(
        side.get("budget_wait_seconds", 30),
        "sidecar.budget_wait_seconds",
        low=Decimal(0),
        high=Decimal(MAX_BUDGET_WAIT_SECONDS),
    )
    sidecar = SidecarSettings(
        host=host,
        port=port,
        max_body_mb=max_body,
        max_reply_mb=max_reply,
        budget_wait_seconds=float(wait),
        **_connection_settings(side),
    )

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
        named_zone(_str(timezone, "timezone", "an IANA timezone name such as 'Europe/Berlin'"))
    gateway = _table(raw, "gateway")
    _check_spelling(gateway, GATEWAY_KEYS, "gateway.")
    week_start = raw.get("week_start")
    if week_start is not None:
        week_start = _str(week_start, "week_start", "a weekday name such as 'monday' or 'sunday'").lower()
        if week_start not in WEEKDAYS:
            raise ConfigError(f"week_start {week_start!r} is not a weekday", hint=f"use one of: {', '.join(WEEKDAYS)}")
    statusline = _table(raw, "statusline")
    _check_spelling(statusline, STATUSLINE_KEYS, "statusline.")
    block = statusline.get("block", False)
    if not isinstance(block, bool):
        raise ConfigError(f"statusline.block must be true or false, got {block!r}")
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
        statusline_block=block,
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
    if config.statusline_block:
        out["statusline"] = {"block": True}
    return out
