"""What a running sidecar uses per provider (base URL, key source) against what the caller's environment says.

A sidecar keeps the environment it started with: a `CCGATE_<PROVIDER>_BASE_URL` or `_API_KEY` exported later
changes nothing until it restarts. `launch`, `doctor` and `provider list` compare the two and say so. Keys are
compared by a fingerprint keyed with the local token (HMAC-SHA256, 16 hex digits), never by value: neither side
sends or logs a key. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ccgate.core.providers import ProviderSpec


def key_fingerprint(token: str, key: str) -> str:
    """Equal keys give equal fingerprints under one local token; nothing about the key can be read back."""
    return hmac.new(token.encode(), key.encode(), hashlib.sha256).hexdigest()[:16]


def sidecar_view(
    providers: Mapping[str, ProviderSpec],
    environ: Mapping[str, str],
    keys: Mapping[str, str],
    token: str,
    sources: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per provider: base URL, where its key came from (`env`, `keyring`, `file` or None) and its fingerprint."""
    view: dict[str, dict[str, Any]] = {}
    for name, spec in providers.items():
        key = keys.get(name)
        if environ.get(spec.key_env):
            source: str | None = "env"
        elif key:
            source = (sources or {}).get(name, "keyring")
        else:
            source = None
        view[name] = {
            "base_url": spec.base_url,
            "key_source": source,
            "key_fingerprint": key_fingerprint(token, key) if key else None,
        }
    return view


@dataclass(frozen=True, slots=True)
class ProviderDifference:
    """One way the running sidecar differs from the caller's environment; `serious` when requests go elsewhere
    than, or with another key than, the caller's environment says."""

    provider: str
    setting: Literal["base_url", "key"]
    message: str
    serious: bool


def differences(
    providers: Mapping[str, ProviderSpec],
    environ: Mapping[str, str],
    token: str,
    sidecar: Mapping[str, Any] | None,
) -> list[ProviderDifference]:
    """Where the sidecar's view (`sidecar_view`, as it reports it) differs from `providers` resolved from the
    caller's config and environment. Only what the environment decides is compared (config is shared, and the
    sidecar reloads it), so no keyring is read here."""
    from ccgate.core.providers import base_url_env_var, redact_url

    found: list[ProviderDifference] = []
    for name, spec in sorted(providers.items()):
        theirs = sidecar.get(name) if sidecar else None
        if not isinstance(theirs, dict):
            continue
        base_url = theirs.get("base_url")
        if isinstance(base_url, str) and base_url != spec.base_url:
            origin = f" ({base_url_env_var(name)})" if environ.get(base_url_env_var(name)) else ""
            theirs_shown, mine_shown = redact_url(base_url), redact_url(spec.base_url)
            if theirs_shown == mine_shown:  # only the path differs, which is not shown (it may hold a token)
                theirs_shown, mine_shown = f"a path on {theirs_shown}", "another path"
            found.append(
                ProviderDifference(
                    name,
                    "base_url",
                    f"{name}: the sidecar sends requests to {theirs_shown}, your environment says {mine_shown}{origin}",
                    True,
                )
            )
        source, fingerprint = theirs.get("key_source"), theirs.get("key_fingerprint")
        mine = environ.get(spec.key_env)
        if mine:
            if source != "env":
                kept = f"its key from the {source}" if source else "no key"
                found.append(
                    ProviderDifference(
                        name, "key", f"{name}: {spec.key_env} is set here, but the sidecar uses {kept}", True
                    )
                )
            elif fingerprint != key_fingerprint(token, mine):
                found.append(
                    ProviderDifference(
                        name, "key", f"{name}: {spec.key_env} here is not the key the sidecar started with", True
                    )
                )
        elif source == "env":
            found.append(
                ProviderDifference(
                    name,
                    "key",
                    f"{name}: the sidecar uses {spec.key_env} from when it started; it is not set here",
                    False,
                )
            )
    return found


def restart_hint(command: str = "claude") -> str:
    """How to get a sidecar with the caller's environment (other sessions using this one stop with it)."""
    return (
        "the sidecar keeps the environment it started with; to use yours: "
        f"`ccgate sidecar stop && ccgate launch {command}`"
    )
