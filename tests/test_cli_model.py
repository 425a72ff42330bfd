"""`ccgate model ...`: tier overrides written to config.toml, names resolved, typos refused."""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_main, table_column

from ccgate.core.pricing import PriceCatalog
from ccgate.core.providers import resolve_providers
from ccgate.core.routing import Router, Target
from ccgate.local.config_file import load_config


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    code, out, err = run_main(capsys, monkeypatch, *args, stdin="")
    return code, out, " ".join(err.split())


def config_toml(home: Path) -> dict[str, Any]:
    path = home / "config.toml"
    return tomllib.loads(path.read_text()) if path.exists() else {}


def model_list(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    code, out, err = run(capsys, monkeypatch, "model", "list", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def test_set_resolves_short_names_and_routes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, _, err = run(
        capsys,
        monkeypatch,
        "model",
        "set",
        "haiku",
        "groq/llama-3.3-70b",
        "--fallback",
        "openrouter/meta-llama/llama-3.3-70b-instruct",
    )
    assert code == 0, err
    assert "using groq's model id llama-3.3-70b-versatile" in err
    chain = ["groq/llama-3.3-70b-versatile", "openrouter/meta-llama/llama-3.3-70b-instruct"]
    assert config_toml(isolated_home)["tiers"]["haiku"]["targets"] == chain

    # the sidecar's router sees exactly that chain for Claude Code's haiku requests
    config = load_config(isolated_home / "config.toml")
    route = Router(config, resolve_providers(config, {})).route("claude-haiku-4-5-20251001")
    assert route.overridden
    assert route.targets == (
        Target("groq", "llama-3.3-70b-versatile"),
        Target("openrouter", "meta-llama/llama-3.3-70b-instruct"),
    )

    catalog = PriceCatalog()
    groq_rates = catalog.rates("llama-3.3-70b-versatile", provider="groq")
    assert groq_rates is not None
    tiers = {row["tier"]: row for row in model_list(capsys, monkeypatch)["tiers"]}
    assert set(tiers) == {"opus", "sonnet", "haiku"}
    assert not tiers["sonnet"]["overridden"] and tiers["sonnet"]["targets"] == []
    primary = tiers["haiku"]["targets"][0]
    assert primary["provider"] == "groq" and primary["model"] == "llama-3.3-70b-versatile"
    assert primary["input_usd_per_mtok"] == format(groq_rates.input.normalize(), "f")
    assert primary["output_usd_per_mtok"] == format(groq_rates.output.normalize(), "f")
    assert primary["price_source"] == "catalog"

    code, _, err = run(capsys, monkeypatch, "model", "unset", "haiku")
    assert code == 0, err
    assert "tiers" not in config_toml(isolated_home)
    code, _, err = run(capsys, monkeypatch, "model", "unset", "haiku")
    assert code == 1 and "haiku has no override" in err


def test_typo_is_refused_with_close_matches(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, _, err = run(capsys, monkeypatch, "model", "set", "haiku", "groq/llama-3.3-70b-versatle")
    assert code == 1
    assert "unknown model 'llama-3.3-70b-versatle' for groq" in err
    assert "llama-3.3-70b-versatile" in err and "--force" in err
    assert not (isolated_home / "config.toml").exists()


def test_a_name_nothing_is_close_to_is_refused_without_pointing_at_an_empty_list(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, _, err = run(capsys, monkeypatch, "model", "set", "opus", "groq/nonexistent-model-xyz")
    assert code == 1
    assert "unknown model 'nonexistent-model-xyz' for groq: none of the" in err
    assert "models ccgate knows there is close" in err
    assert "use one of those" not in err
    assert "hint: check the id against groq's model list, or pass --force" in err
    assert not (isolated_home / "config.toml").exists()


def test_force_stores_unknown_model_as_unpriced(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, _, err = run(capsys, monkeypatch, "model", "set", "opus", "ollama/qwen2.5-coder:32b")
    assert code == 1 and "no price list for provider 'ollama'" in err and "--force" in err

    code, _, err = run(capsys, monkeypatch, "model", "set", "opus", "ollama/qwen2.5-coder:32b", "--force")
    assert code == 0, err
    assert "unpriced until you run `ccgate price set ollama/qwen2.5-coder:32b" in err
    assert config_toml(isolated_home)["tiers"]["opus"]["targets"] == ["ollama/qwen2.5-coder:32b"]
    opus = next(row for row in model_list(capsys, monkeypatch)["tiers"] if row["tier"] == "opus")
    assert opus["targets"][0]["input_usd_per_mtok"] is None and opus["targets"][0]["price_source"] is None

    # a price set in config makes the same name acceptable without --force
    path = isolated_home / "config.toml"
    path.write_text(path.read_text() + '\n[prices."ollama/llama3"]\ninput = "0"\noutput = "0"\n')
    code, _, err = run(capsys, monkeypatch, "model", "set", "sonnet", "ollama/llama3")
    assert code == 0, err
    sonnet = next(row for row in model_list(capsys, monkeypatch)["tiers"] if row["tier"] == "sonnet")
    assert sonnet["targets"][0]["input_usd_per_mtok"] == "0"
    assert sonnet["targets"][0]["price_source"] == "override"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("haik", "groq/llama-3.3-70b"), ["unknown tier 'haik'", "opus, sonnet, haiku"]),
        (("haiku", "grok/llama-3.3-70b"), ["unknown provider 'grok'", "groq", "openrouter", "ollama"]),
        (("haiku", "llama-3.3-70b"), ["not 'provider/model'"]),
        (("haiku", "groq/llama-3.3-70b-versatile", "--fallback", "groq/llama-3.3-70b"), ["appears twice"]),
    ],
)
def test_bad_tier_provider_or_target(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    isolated_home: Path,
    args: tuple[str, ...],
    fragments: list[str],
) -> None:
    code, _, err = run(capsys, monkeypatch, "model", "set", *args)
    assert code == 1
    assert "ccgate: error:" in err
    for fragment in fragments:
        assert fragment in err
    assert not (isolated_home / "config.toml").exists()


def test_exact_model_name_rule(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, _, err = run(capsys, monkeypatch, "model", "set", "claude-opus-4-8", "deepseek/deepseek-chat")
    assert code == 0, err
    data = config_toml(isolated_home)
    assert data["model_rules"] == {"claude-opus-4-8": "claude-opus-4-8"}
    config = load_config(isolated_home / "config.toml")
    router = Router(config, resolve_providers(config, {}))
    assert router.route("claude-opus-4-8").targets == (Target("deepseek", "deepseek-chat"),)
    assert not router.route("claude-opus-4-7").overridden  # other opus models still go to Anthropic

    code, _, err = run(capsys, monkeypatch, "model", "unset", "claude-opus-4-8")
    assert code == 0, err
    assert config_toml(isolated_home) == {}


def test_changes_notify_a_running_sidecar(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    isolated_home: Path,
    reload_notices: list[object],
) -> None:
    calls = reload_notices
    code, _, err = run(capsys, monkeypatch, "model", "set", "haiku", "groq/llama-3.3-70b-versatile")
    assert code == 0, err
    assert len(calls) == 1 and "sidecar reloaded" in err
    code, _, err = run(capsys, monkeypatch, "model", "unset", "haiku")
    assert code == 0 and len(calls) == 2


def test_model_test_without_a_sidecar(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ccgate.sidecar import process

    monkeypatch.setattr(process, "sidecar_url", lambda paths=None: None, raising=False)
    code, _, err = run(capsys, monkeypatch, "model", "test", "haiku")
    assert code == 1 and "sidecar is not running" in err and "ccgate sidecar start" in err

    monkeypatch.delattr(process, "sidecar_url")
    code, _, err = run(capsys, monkeypatch, "model", "test", "haiku")
    assert code == 1 and "not available yet" in err


async def test_model_test_through_a_running_sidecar(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real sidecar app on loopback, in front of a scripted Anthropic upstream."""
    from aiohttp import web
    from scripted_upstream import ScriptedUpstream, TextReply

    from ccgate.core.settings import Config
    from ccgate.local.paths import resolve_paths
    from ccgate.sidecar.app import create_app, create_runner
    from ccgate.sidecar.process import ensure_token, remove_run_files, write_run_files

    async with ScriptedUpstream() as upstream:
        upstream.enqueue(TextReply("ok"))
        monkeypatch.setenv("CCGATE_ANTHROPIC_BASE_URL", upstream.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-dummy-user-key")
        paths = resolve_paths().ensure()
        app = create_app(paths, Config(), token=ensure_token(paths), environ=dict(os.environ))
        runner = create_runner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        write_run_files(paths, os.getpid(), port)
        try:
            code, _, err = await asyncio.to_thread(run, capsys, monkeypatch, "model", "test", "sonnet")
        finally:
            remove_run_files(paths, os.getpid())
            await runner.cleanup()
        assert code == 0, err
        assert "sonnet: HTTP 200" in err and "said 'ok'" in err
        assert "sk-ant-dummy-user-key" not in err
        sent = upstream.messages_requests
        assert len(sent) == 1 and sent[0].model == "claude-sonnet-4-5"
        assert sent[0].headers["x-api-key"] == "sk-ant-dummy-user-key"


def test_set_warns_when_the_routed_provider_has_no_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, monkeypatch, "model", "set", "haiku", "groq/llama-3.3-70b-versatile")
    assert code == 0, err
    assert "no API key for groq yet" in err and "ccgate provider key set groq" in err
    monkeypatch.setenv("CCGATE_GROQ_API_KEY", "gsk-test")
    code, _, err = run(capsys, monkeypatch, "model", "set", "haiku", "groq/llama-3.3-70b-versatile")
    assert code == 0, err
    assert "no API key" not in err


def test_list_folds_long_model_ids_and_keeps_prices_in_80_columns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = "openrouter/meta-llama/llama-3.3-70b-instruct"
    code, _, err = run(
        capsys, monkeypatch, "model", "set", "opus", target, "--fallback", "groq/llama-3.3-70b-versatile"
    )
    assert code == 0, err
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_main(capsys, monkeypatch, "model", "list")
    assert code == 0, err
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert target in table_column(out, "route", "input $/MTok")
    assert out.count("0.59") == 2 and out.count("0.79") == 2
