"""`ccgate price show|set|unset`, run the way a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cli_runner import run_main as run


def config_prices(home: Path) -> dict[str, object]:
    path = home / "config.toml"
    prices = tomllib.loads(path.read_text()).get("prices", {})
    assert isinstance(prices, dict)
    return prices


def test_show_catalog_model_as_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(
        capsys, monkeypatch, "price", "show", "claude-sonnet-4-5-20250929", "--provider", "anthropic", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["source"] == "catalog"
    assert data["priced_model"] == "claude-sonnet-4-5"
    assert data["provider"] == "anthropic"
    assert data["per_mtok"] == {
        "input": "3",
        "output": "15",
        "cache_read": "0.3",
        "cache_write_5m": "3.75",
        "cache_write_1h": "6",
    }
    assert data["long_context"]["above_input_tokens"] == 200_000
    assert data["long_context"]["per_mtok"]["output"] == "22.5"
    assert data["web_searches_per_k"] == "10"


def test_show_text(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(capsys, monkeypatch, "price", "show", "claude-haiku-4-5")
    assert code == 0
    assert "catalog anthropic/claude-haiku-4-5" in out
    lines = {line.split("$")[0].strip(): line.split("$")[1].split()[0] for line in out.splitlines() if "$" in line}
    assert lines["input"] == "1.00"
    assert lines["cache read"] == "0.10"
    assert lines["cache write 5m"] == "1.25"
    assert lines["cache write 1h"] == "2.00"
    assert "prompts over" not in out


def test_show_unknown_model_fails_with_the_set_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(capsys, monkeypatch, "price", "show", "mystery-model-1", "--provider", "groq")
    assert code == 1
    assert out == ""
    assert "no price known for groq/mystery-model-1" in err
    assert "ccgate price set mystery-model-1" in err


def test_show_estimated_model_says_so(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, monkeypatch, "price", "show", "claude-opus-9-9", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["source"] == "estimated"
    assert "opus" in data["priced_model"]
    code, out, err = run(capsys, monkeypatch, "price", "show", "claude-opus-9-9")
    assert code == 0
    assert "ESTIMATED" in out
    assert "not in the price catalog" in " ".join(err.split())


def test_set_show_unset_round_trip(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, _, err = run(
        capsys, monkeypatch, "price", "set", "my-model", "--input", "0.59", "--output", "0.79", "--cache-read", "0.1"
    )
    assert code == 0, err
    assert config_prices(isolated_home) == {"my-model": {"input": "0.59", "output": "0.79", "cache_read": "0.1"}}

    code, out, _ = run(capsys, monkeypatch, "price", "show", "my-model", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["source"] == "override"
    # the cache writes it left out cost what input costs (no catalog entry for this model)
    assert data["per_mtok"] == {
        "input": "0.59",
        "output": "0.79",
        "cache_read": "0.1",
        "cache_write_5m": "0.59",
        "cache_write_1h": "0.59",
    }

    code, _, err = run(capsys, monkeypatch, "price", "unset", "my-model")
    assert code == 0, err
    assert config_prices(isolated_home) == {}
    code, _, err = run(capsys, monkeypatch, "price", "show", "my-model")
    assert code == 1


def test_set_zero_prices_a_local_model_at_zero(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, _, err = run(capsys, monkeypatch, "price", "set", "llama3.2", "--input", "0", "--output", "0")
    assert code == 0, err
    from ccgate.core.pricing import PriceCatalog
    from ccgate.core.records import PriceQuality, Usage
    from ccgate.local.config_file import load_config

    catalog = PriceCatalog(load_config(isolated_home / "config.toml").prices)
    cost = catalog.cost("llama3.2", Usage(input_tokens=9_000, output_tokens=100), provider="ollama")
    assert (cost.nanos, cost.quality) == (0, PriceQuality.PRICED)


def test_set_keeps_other_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    (isolated_home / "config.toml").write_text(
        '[sidecar]\nport = 9999\n\n[prices.other]\ninput = "1"\noutput = "2"\n', encoding="utf-8"
    )
    code, _, err = run(capsys, monkeypatch, "price", "set", "claude-opus-4-5", "--input", "4", "--output", "20")
    assert code == 0, err
    raw = tomllib.loads((isolated_home / "config.toml").read_text())
    assert raw["sidecar"]["port"] == 9999
    assert set(raw["prices"]) == {"other", "claude-opus-4-5"}
    code, out, _ = run(capsys, monkeypatch, "price", "show", "claude-opus-4-5", "--json")
    data = json.loads(out)
    # cache read follows the catalog's read/input ratio (Opus 4.5: 0.50/5) applied to the override's input
    assert (data["source"], data["per_mtok"]["input"], data["per_mtok"]["cache_read"]) == ("override", "4", "0.4")


@pytest.mark.parametrize("bad", ["-1", "abc", "nan", "inf", "", "1e999999999", "1,5", "0.0000000001", "2000000000"])
def test_set_rejects_bad_rates(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path, bad: str
) -> None:
    code, _, err = run(capsys, monkeypatch, "price", "set", "m", "--input", bad, "--output", "1")
    assert code == 1
    assert "--input must be a non-negative number" in err
    assert not (isolated_home / "config.toml").exists()


def test_set_writes_plain_decimals_and_reads_them_back(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, _, err = run(capsys, monkeypatch, "price", "set", "m", "--input", "0.0000001", "--output", "$1,000.50")
    assert code == 0, err
    text = (isolated_home / "config.toml").read_text()
    assert "E-" not in text and "E+" not in text
    assert config_prices(isolated_home) == {"m": {"input": "0.0000001", "output": "1000.50"}}
    code, out, _ = run(capsys, monkeypatch, "price", "show", "m", "--json")
    assert code == 0
    assert json.loads(out)["per_mtok"]["input"] == "0.0000001"


def test_a_bad_rate_in_config_is_an_error_naming_file_and_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    config = isolated_home / "config.toml"
    config.write_text('[prices.m]\ninput = "1E+999999999"\noutput = 1\n')
    code, _, err = run(capsys, monkeypatch, "price", "show", "m")
    assert code == 1
    assert str(config) in err and "prices.m.input" in err and "Traceback" not in err


def test_unset_keeps_what_ccgate_does_not_model(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    config = isolated_home / "config.toml"
    config.write_text(
        '[sidecar]\nlog_level = "debug"\n\n[prices.a]\ninput = 1\noutput = 2.5\nsource = "invoice 7"\n\n'
        "[prices.b]\ninput = 1\noutput = 2\n\n[future_section]\nanswer = 42\n"
    )
    code, _, err = run(capsys, monkeypatch, "price", "unset", "b")
    assert code == 0, err
    assert tomllib.loads(config.read_text()) == {
        "sidecar": {"log_level": "debug"},
        "prices": {"a": {"input": 1, "output": 2.5, "source": "invoice 7"}},
        "future_section": {"answer": 42},
    }
    code, _, err = run(capsys, monkeypatch, "price", "unset", "a")
    assert code == 0, err
    assert tomllib.loads(config.read_text()) == {"sidecar": {"log_level": "debug"}, "future_section": {"answer": 42}}


def test_unset_unknown_override_fails(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(capsys, monkeypatch, "price", "unset", "never-set")
    assert code == 1
    assert "no price override for 'never-set'" in err


def test_price_show_as_a_real_process(isolated_home: Path) -> None:
    env = {**os.environ, "CCGATE_HOME": str(isolated_home)}
    done = subprocess.run(
        [sys.executable, "-m", "ccgate", "price", "show", "claude-opus-4-5", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["per_mtok"]["output"] == "25"


def test_cli_startup_does_not_import_genai_prices() -> None:
    code = "import sys, ccgate.cli; print('genai_prices' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_set_and_unset_notify_a_running_sidecar(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    isolated_home: Path,
    reload_notices: list[object],
) -> None:
    calls = reload_notices
    code, _, err = run(capsys, monkeypatch, "price", "set", "my-local-7b", "--input", "0", "--output", "0")
    assert code == 0, err
    assert len(calls) == 1 and "the running sidecar reloaded its settings" in err
    assert "my-local-7b" in config_prices(isolated_home)
    code, _, err = run(capsys, monkeypatch, "price", "unset", "my-local-7b")
    assert code == 0, err
    assert len(calls) == 2 and "the running sidecar reloaded its settings" in err
