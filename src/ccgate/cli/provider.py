"""`ccgate provider list|add|remove|key set|key delete|test`: the providers ccgate can route to, and their keys."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import typer

from ccgate.cli._app import AppContext, ctx, notify_reload, save_and_reload

if TYPE_CHECKING:
    from ccgate.core.providers import ProviderSpec

provider_app = typer.Typer(
    help="List, add and test providers; store their API keys in the keyring.", no_args_is_help=True
)
key_app = typer.Typer(
    help="Store or delete a provider's API key (keyring, never the config file).", no_args_is_help=True
)
provider_app.add_typer(key_app, name="key")


def resolved_providers(app_ctx: AppContext) -> dict[str, ProviderSpec]:
    from ccgate.core.providers import resolve_providers

    return resolve_providers(app_ctx.config, app_ctx.environ)


def require_provider(app_ctx: AppContext, name: str) -> ProviderSpec:
    providers = resolved_providers(app_ctx)
    spec = providers.get(name)
    if spec is None:
        app_ctx.fail(
            f"unknown provider {name!r}; valid providers: {', '.join(sorted(providers))}",
            hint="add a custom one with `ccgate provider add NAME --kind openai --base-url URL`",
        )
    return spec


@provider_app.command("list")
def provider_list(
    as_json: bool = typer.Option(False, "--json", help="Print JSON (never includes key values)."),
) -> None:
    """Show every provider, where it points, and whether a key is available (never the key itself)."""
    from ccgate.local.secrets import provider_key_source

    app_ctx = ctx()
    providers = resolved_providers(app_ctx)
    sidecar, differing = _sidecar_providers(app_ctx, providers)
    rows: list[dict[str, Any]] = []
    for spec in sorted(providers.values(), key=lambda s: (not s.builtin, s.name)):
        source = provider_key_source(spec.name, app_ctx.environ, paths=app_ctx.paths)
        if source:
            key = "present"
        elif spec.name == "anthropic":
            key = "Claude Code's"  # the developer's own API key or login passes through
        else:
            key = "missing" if spec.requires_key else "not needed"
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "base_url": spec.base_url,
                "builtin": spec.builtin,
                "key": key,
                "key_source": source,
                "key_env": spec.key_env,
                "sidecar": _sidecar_row(sidecar, spec.name, differing),
            }
        )
    if as_json:
        app_ctx.print_json({"providers": rows, "sidecar_running": sidecar is not None})
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False)
    columns = ("provider", "kind", "base URL", "key", "source", *(("sidecar",) if sidecar is not None else ()))
    for column in columns:
        table.add_column(column, overflow="fold")  # a long URL or key source folds instead of being cut
    for row in rows:
        style = {"present": "green", "missing": "yellow"}.get(row["key"], "dim")
        name = row["name"] if row["builtin"] else f"{row['name']} (custom)"
        cells: list[str | Text] = [name, row["kind"], row["base_url"], Text(row["key"], style=style)]
        cells.append(row["key_source"] or "-")
        if row["sidecar"] is not None:
            same = not row["sidecar"]["differs"]
            key = row["sidecar"]["key_source"] or "no key"
            cells.append(Text(f"same ({key})", style="green") if same else Text(f"differs ({key})", style="red"))
        table.add_row(*cells)
    app_ctx.out.print(table)
    if differing:
        from ccgate.core.provider_env import restart_hint

        for messages in differing.values():
            for message in messages:
                app_ctx.warn(message)
        app_ctx.info(f"  hint: {restart_hint()}")


def _sidecar_providers(
    app_ctx: AppContext, providers: dict[str, ProviderSpec]
) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
    """What the running sidecar uses per provider (None when none runs or it does not say), and per provider the
    ways it differs from this environment."""
    from ccgate.core.provider_env import differences
    from ccgate.errors import CcgateError
    from ccgate.sidecar.process import control_request, ensure_token, running_sidecar

    if running_sidecar(app_ctx.paths) is None:
        return None, {}
    try:
        status = control_request(app_ctx.paths, "GET", "/_ccgate/status", timeout=2.0)
    except CcgateError:
        return None, {}
    theirs = status.get("providers") if status else None
    if not isinstance(theirs, dict):
        return None, {}
    differing: dict[str, list[str]] = {}
    for item in differences(providers, app_ctx.environ, ensure_token(app_ctx.paths), theirs):
        differing.setdefault(item.provider, []).append(item.message)
    return theirs, differing


def _sidecar_row(sidecar: dict[str, Any] | None, name: str, differing: dict[str, list[str]]) -> dict[str, Any] | None:
    """The running sidecar's base URL and key source for one provider (never a key, nor its fingerprint)."""
    view = sidecar.get(name) if sidecar else None
    if not isinstance(view, dict):
        return None
    return {"base_url": view.get("base_url"), "key_source": view.get("key_source"), "differs": differing.get(name, [])}


@provider_app.command("add")
def provider_add(
    name: str = typer.Argument(..., help="A short name, used in targets like NAME/model."),
    kind: str = typer.Option(..., "--kind", help="API dialect: openai (chat/completions) or anthropic (messages)."),
    base_url: str = typer.Option(..., "--base-url", help="For openai: the prefix before /chat/completions."),
    stream_usage: bool = typer.Option(
        True, "--stream-usage/--no-stream-usage", help="Whether it accepts stream_options.include_usage."
    ),
) -> None:
    """Add (or update) a custom provider in config.toml."""
    from ccgate.core.providers import BUILTIN, base_url_env_var, env_clash, validate_base_url, validate_provider_name
    from ccgate.core.settings import ProviderSettings

    app_ctx = ctx()
    if kind not in ("openai", "anthropic"):
        app_ctx.fail(f"unknown kind {kind!r}; valid kinds: openai, anthropic")
    validate_provider_name(name)
    if name in BUILTIN:
        app_ctx.fail(
            f"{name!r} is a built-in provider and cannot be re-added",
            hint=f"to point it elsewhere set {base_url_env_var(name)} or edit [providers.{name}] in config.toml",
        )
    url = validate_base_url(base_url, "--base-url", provider=name)
    config = app_ctx.config
    clash = env_clash(name, (*BUILTIN, *config.providers))
    if clash is not None:
        app_ctx.fail(
            f"{name!r} would share {key_env(name)} and {base_url_env_var(name)} with provider {clash!r}",
            hint=f"pick a name that differs from {clash!r} by more than '-' and '_'",
        )
    existed = name in config.providers
    providers = dict(config.providers)
    providers[name] = ProviderSettings(name=name, kind=kind, base_url=url, supports_stream_usage=stream_usage)
    save_and_reload(app_ctx, replace(config, providers=providers))
    app_ctx.success(f"{'updated' if existed else 'added'} provider {name} ({kind}, {url})")
    app_ctx.info(f"store its key with `ccgate provider key set {name}` (or set {key_env(name)})")


def key_env(name: str) -> str:
    from ccgate.core.providers import key_env_var

    return key_env_var(name)


@provider_app.command("remove")
def provider_remove(name: str = typer.Argument(..., help="A custom provider's name.")) -> None:
    """Remove a custom provider from config.toml (built-ins cannot be removed)."""
    from ccgate.core.providers import BUILTIN
    from ccgate.core.routing import parse_target

    app_ctx = ctx()
    config = app_ctx.config
    if name in BUILTIN:
        app_ctx.fail(f"{name!r} is a built-in provider and cannot be removed")
    if name not in config.providers:
        custom = ", ".join(sorted(config.providers)) or "none"
        app_ctx.fail(f"no custom provider {name!r}; custom providers: {custom}")
    using = sorted(tier for tier, t in config.tiers.items() if any(parse_target(x).provider == name for x in t.targets))
    if using:
        app_ctx.fail(
            f"provider {name!r} is used by tier(s): {', '.join(using)}",
            hint=f"change or unset them first: `ccgate model unset {using[0]}`",
        )
    providers = {k: v for k, v in config.providers.items() if k != name}
    save_and_reload(app_ctx, replace(config, providers=providers))
    app_ctx.success(f"removed provider {name}")
    app_ctx.info(f"its stored key (if any) is kept; delete it with `ccgate provider key delete {name}`")


@key_app.command("set")
def key_set(
    name: str = typer.Argument(..., help="Provider name."),
    from_stdin: bool = typer.Option(
        False, "--stdin", help="Read the key from standard input (the default when it is not a terminal)."
    ),
) -> None:
    """Store a provider's API key in the OS keyring (typed at a hidden prompt, or piped in)."""
    from ccgate.local.secrets import backend_description, set_provider_key

    app_ctx = ctx()
    spec = require_provider(app_ctx, name)
    if not spec.requires_key:
        app_ctx.warn(f"{name} does not need a key; storing it anyway")
    value = _read_key(name, from_stdin)
    if not value:
        app_ctx.fail(
            "no key given",
            hint=f'paste the key at the prompt, or pipe it: `echo "$KEY" | ccgate provider key set {name}`',
        )
    if any(ch.isspace() for ch in value):
        app_ctx.fail("the key contains whitespace", hint="pass the key alone, on one line")
    if not value.isprintable():
        app_ctx.fail("the key contains control characters", hint="pass the key alone, as the provider shows it")
    set_provider_key(name, value, paths=app_ctx.paths)
    where, is_file = backend_description(paths=app_ctx.paths)
    app_ctx.success(f"stored the key for {name} ({where})")
    if is_file:
        app_ctx.warn("no OS keyring is available; the key is in a 0600 file (see `ccgate doctor`)")
    if app_ctx.environ.get(spec.key_env):
        app_ctx.warn(f"{spec.key_env} is set in this environment and takes precedence over the stored key")
    notify_reload(app_ctx)


def _read_key(name: str, from_stdin: bool) -> str:
    """The key from a hidden prompt on a terminal, else the first line of stdin, read silently.

    getpass would warn that it cannot hide the input of a pipe, and click's prompt turns an empty stdin into
    "Aborted!"; the caller says "no key given" instead.
    """
    stdin = sys.stdin
    if stdin is None:
        return ""
    if from_stdin or not stdin.isatty():
        try:
            return stdin.readline().strip()
        except (OSError, UnicodeDecodeError):
            return ""
    try:
        return str(typer.prompt(f"API key for {name}", hide_input=True)).strip()
    except typer.Abort:  # Ctrl-D or Ctrl-C at the prompt (the prompt has ended its line itself)
        return ""


@key_app.command("delete")
def key_delete(name: str = typer.Argument(..., help="Provider name.")) -> None:
    """Delete a provider's stored API key."""
    from ccgate.core.providers import key_env_var
    from ccgate.local.secrets import delete_provider_key

    app_ctx = ctx()
    deleted = delete_provider_key(name, paths=app_ctx.paths)
    if not deleted:
        app_ctx.fail(f"no stored key for {name!r}")
    app_ctx.success(f"deleted the stored key for {name}")
    env = key_env_var(name)
    if app_ctx.environ.get(env):
        app_ctx.warn(f"{env} is still set in this environment and still provides a key")
    notify_reload(app_ctx)


def _probe(spec: ProviderSpec, key: str | None) -> tuple[str, dict[str, str]]:
    """The cheapest authenticated request each dialect has: list models."""
    if spec.kind == "anthropic":
        url = f"{spec.base_url}/v1/models"
        headers = {"anthropic-version": "2023-06-01"}
        if key:
            headers["x-api-key" if spec.auth == "x-api-key" else "authorization"] = (
                key if spec.auth == "x-api-key" else f"Bearer {key}"
            )
    else:
        url = f"{spec.base_url}/models"
        headers = {}
        if key:
            headers = {"x-api-key": key} if spec.auth == "x-api-key" else {"authorization": f"Bearer {key}"}
    return url, headers


async def _send(url: str, headers: dict[str, str]) -> tuple[int, str, float]:
    import time

    from ccgate.proxy.upstream import create_client_session

    async with create_client_session(connect_timeout=10.0, read_timeout=30.0) as session:
        started = time.perf_counter()
        async with session.get(url, headers=headers, allow_redirects=False) as response:
            body = await response.text(errors="replace")
            return response.status, body, (time.perf_counter() - started) * 1000


def _error_excerpt(body: str, key: str | None) -> str:
    import json

    text = body.strip()
    try:
        data = json.loads(text)
    except ValueError:
        pass
    else:
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(error, str):
            text = error
    text = " ".join(text.split())[:200]
    return text.replace(key, "***") if key else text


@provider_app.command("test")
def provider_test(name: str = typer.Argument(..., help="Provider name.")) -> None:
    """Send one tiny request (list models) and report status and latency."""
    import asyncio

    import aiohttp

    from ccgate.core.providers import base_url_env_var
    from ccgate.errors import UpstreamError
    from ccgate.local.secrets import get_provider_key

    app_ctx = ctx()
    spec = require_provider(app_ctx, name)
    key = get_provider_key(name, app_ctx.environ, paths=app_ctx.paths)
    if key is None and spec.requires_key:
        app_ctx.fail(
            f"no API key for {name}",
            hint=f"run `ccgate provider key set {name}` or set {spec.key_env}",
        )
    url, headers = _probe(spec, key)
    try:
        status, body, elapsed_ms = asyncio.run(_send(url, headers))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        raise UpstreamError(
            f"cannot reach {name} at {url}: {detail}",
            hint=f"check the base URL (`ccgate provider list`, {base_url_env_var(name)}) and your network",
        ) from exc
    if 200 <= status < 300:
        app_ctx.success(f"{name}: HTTP {status} in {elapsed_ms:.0f} ms (GET {url})")
        return
    excerpt = _error_excerpt(body, key)
    if status in (401, 403):
        hint = f"the key was rejected; store a new one with `ccgate provider key set {name}`"
    elif status == 404:
        hint = "check the base URL: for openai-kind providers it is the prefix before /chat/completions"
    else:
        hint = "the provider is reachable but unhappy; try again later or check its status page"
    raise UpstreamError(f"{name} answered HTTP {status} to GET {url}: {excerpt}", hint=hint)


def register(app: typer.Typer) -> None:
    app.add_typer(provider_app, name="provider")
