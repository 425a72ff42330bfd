"""config.toml: read with tomllib into typed settings, written back atomically with tomli-w.

Secrets never live here; provider keys go to the keyring (see `secrets`).
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ccgate.errors import ConfigError

DEFAULT_PORT = 8787
DEFAULT_MAX_BODY_MB = 64
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
            pass
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


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    try:
        # float -> str first, so 0.1 stays 0.1 rather than its binary neighbour
        result = Decimal(str(value))
    except InvalidOperation as exc:
        raise ConfigError(f"{where} must be a number, got {value!r}") from exc
    if not result.is_finite() or result < 0:
        raise ConfigError(f"{where} must be a non-negative number, got {value!r}")
    return result


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table")
    return value


def config_from_dict(raw: dict[str, Any]) -> Config:
    side = _table(raw, "sidecar")
    port = side.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"sidecar.port must be a port number, got {port!r}")
    max_body = side.get("max_body_mb", DEFAULT_MAX_BODY_MB)
    if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body < 1:
        raise ConfigError(f"sidecar.max_body_mb must be a positive integer, got {max_body!r}")
    host = side.get("host", "127.0.0.1")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"sidecar.host must be a loopback address, got {host!r}", hint="use 127.0.0.1")
    sidecar = SidecarSettings(
        host=host,
        port=port,
        max_body_mb=max_body,
        budget_wait_seconds=float(_decimal(side.get("budget_wait_seconds", 30), "sidecar.budget_wait_seconds")),
    )

    providers: dict[str, ProviderSettings] = {}
    for name, entry in _table(raw, "providers").items():
        if not isinstance(entry, dict):
            raise ConfigError(f"[providers.{name}] must be a table")
        kind = entry.get("kind")
        if kind is not None and kind not in ("anthropic", "openai"):
            raise ConfigError(f"providers.{name}.kind must be 'anthropic' or 'openai', got {kind!r}")
        stream_usage = entry.get("supports_stream_usage")
        providers[name] = ProviderSettings(
            name=name,
            kind=kind,
            base_url=entry.get("base_url"),
            supports_stream_usage=stream_usage if isinstance(stream_usage, bool) else None,
        )

    tiers: dict[str, TierSettings] = {}
    for tier, entry in _table(raw, "tiers").items():
        targets = entry.get("targets") if isinstance(entry, dict) else None
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise ConfigError(f"tiers.{tier}.targets must be a non-empty list of 'provider/model' strings")
        tiers[tier] = TierSettings(tier=tier, targets=tuple(targets))

    model_rules = {str(k): str(v) for k, v in _table(raw, "model_rules").items()}

    prices: dict[str, PriceOverride] = {}
    for model, entry in _table(raw, "prices").items():
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise ConfigError(f"prices.{model} needs at least `input` and `output` (USD per million tokens)")

        def optional(key: str, entry: dict[str, Any] = entry, model: str = model) -> Decimal | None:
            return _decimal(entry[key], f"prices.{model}.{key}") if key in entry else None

        prices[model] = PriceOverride(
            input=_decimal(entry["input"], f"prices.{model}.input"),
            output=_decimal(entry["output"], f"prices.{model}.output"),
            cache_read=optional("cache_read"),
            cache_write_5m=optional("cache_write_5m"),
            cache_write_1h=optional("cache_write_1h"),
        )

    budgets_raw = raw.get("budgets", [])
    if not isinstance(budgets_raw, list):
        raise ConfigError("budgets must be an array of tables ([[budgets]])")
    budgets = []
    for index, entry in enumerate(budgets_raw):
        if not isinstance(entry, dict) or "period" not in entry or "limit" not in entry:
            raise ConfigError(f"budgets[{index}] needs `period` and `limit`")
        budgets.append(
            BudgetSettings(
                period=str(entry["period"]),
                limit_usd=_decimal(entry["limit"], f"budgets[{index}].limit"),
                project=entry.get("project"),
                warn_at=_decimal(entry.get("warn_at", "0.8"), f"budgets[{index}].warn_at"),
            )
        )
    timezone = raw.get("timezone")
    gateway = _table(raw, "gateway")
    return Config(
        sidecar=sidecar,
        providers=providers,
        tiers=tiers,
        model_rules=model_rules,
        prices=prices,
        budgets=tuple(budgets),
        timezone=timezone if isinstance(timezone, str) else None,
        gateway_url=gateway.get("url"),
    )


def config_to_dict(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    default_sidecar = SidecarSettings()
    if config.sidecar != default_sidecar:
        out["sidecar"] = {
            "host": config.sidecar.host,
            "port": config.sidecar.port,
            "max_body_mb": config.sidecar.max_body_mb,
            "budget_wait_seconds": config.sidecar.budget_wait_seconds,
        }
    if config.timezone:
        out["timezone"] = config.timezone
    if config.providers:
        out["providers"] = {
            name: {
                k: v
                for k, v in (
                    ("kind", p.kind),
                    ("base_url", p.base_url),
                    ("supports_stream_usage", p.supports_stream_usage),
                )
                if v is not None
            }
            for name, p in config.providers.items()
        }
    if config.tiers:
        out["tiers"] = {name: {"targets": list(t.targets)} for name, t in config.tiers.items()}
    if config.model_rules:
        out["model_rules"] = dict(config.model_rules)
    if config.prices:
        out["prices"] = {
            model: {
                k: str(v)
                for k, v in (
                    ("input", p.input),
                    ("output", p.output),
                    ("cache_read", p.cache_read),
                    ("cache_write_5m", p.cache_write_5m),
                    ("cache_write_1h", p.cache_write_1h),
                )
                if v is not None
            }
            for model, p in config.prices.items()
        }
    if config.budgets:
        out["budgets"] = [
            {
                k: v
                for k, v in (
                    ("period", b.period),
                    ("limit", str(b.limit_usd)),
                    ("project", b.project),
                    ("warn_at", str(b.warn_at)),
                )
                if v is not None
            }
            for b in config.budgets
        ]
    if config.gateway_url:
        out["gateway"] = {"url": config.gateway_url}
    return out


def save_config(path: Path, config: Config) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a config."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    data = tomli_w.dumps(config_to_dict(config)).encode("utf-8")
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
