"""config.toml: every value type-checked on load, amounts held to the money rules, saves that keep unknown keys."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from cli_runner import run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.core.money import MAX_USD, AmountError, parse_usd
from ccgate.core.settings import BudgetSettings, Config, PriceOverride, TierSettings
from ccgate.errors import ConfigError
from ccgate.local.config_file import load_config, save_config


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "config.toml"


@pytest.mark.parametrize(
    ("toml", "key", "expected"),
    [
        ('[[budgets]]\nperiod = "daily"\nlimit = 5\nproject = 5\n', "budgets[0].project", "a project directory"),
        ("[[budgets]]\nperiod = 1\nlimit = 5\n", "budgets[0].period", "a period string"),
        ('[[budgets]]\nperiod = "daily"\nlimit = 5\nwarn_at = 2\n', "budgets[0].warn_at", "a number from 0"),
        ('[[budgets]]\nperiod = "daily"\nlimit = "nan"\n', "budgets[0].limit", "not a valid USD amount"),
        ('[[budgets]]\nperiod = "daily"\nlimit = -1\n', "budgets[0].limit", "cannot be negative"),
        ('[[budgets]]\nperiod = "daily"\nlimit = "1,5"\n', "budgets[0].limit", "commas may only separate"),
        ('[[budgets]]\nperiod = "daily"\nlimit = inf\n', "budgets[0].limit", "not a finite number"),
        ('[providers.x]\nkind = "openai"\nbase_url = 5\n', "providers.x.base_url", "an http(s) URL string"),
        (
            '[providers.x]\nkind = "openai"\nbase_url = "http://h"\nsupports_stream_usage = "yes"\n',
            "providers.x.supports_stream_usage",
            "true or false",
        ),
        ("timezone = 5\n", "timezone", "an IANA timezone name"),
        ('timezone = "Mars/Olympus_Mons"\n', "timezone", "not a known IANA timezone"),
        ("[model_rules]\nx = [1, 2]\n", "model_rules.x", "a tier name string"),
        ("[tiers.haiku]\ntargets = [1]\n", "tiers.haiku.targets", "'provider/model' strings"),
        ("[gateway]\nurl = 5\n", "gateway.url", "a URL string"),
        ('[prices.m]\ninput = "1e999999"\noutput = 1\n', "prices.m.input", "not a plain decimal number"),
        ("[prices.m]\ninput = 1\noutput = 1e300\n", "prices.m.output", "ceiling"),
        ('[prices.m]\ninput = 1\noutput = 1\ncache_read = "0.0000000001"\n', "prices.m.cache_read", "9 decimal"),
        ("[sidecar]\nbudget_wait_seconds = inf\n", "sidecar.budget_wait_seconds", "a number from 0"),
        # a misspelt key left the default in force without a word (a misspelt budget was never enforced)
        ('[[budget]]\nperiod = "daily"\nlimit = 5\n', "budget is not a ccgate setting", "did you mean budgets?"),
        ('timezon = "Europe/Berlin"\n', "timezon is not", "did you mean timezone?"),
        ("[sidecar]\nprot = 9000\n", "sidecar.prot is not", "did you mean sidecar.port?"),
        ('[[budgets]]\nperiod = "daily"\nlimt = 5\n', "budgets[0].limt is not", "did you mean budgets[0].limit?"),
        ('[providers.x]\nkind = "openai"\nbaseurl = "http://h"\n', "providers.x.baseurl", "providers.x.base_url?"),
        ('[tiers.haiku]\ntarget = ["groq/m"]\n', "tiers.haiku.target is not", "did you mean tiers.haiku.targets?"),
        ("[prices.m]\ninputs = 1\noutput = 1\n", "prices.m.inputs is not", "did you mean prices.m.input?"),
        ('[gateway]\nulr = "https://gw"\n', "gateway.ulr is not", "did you mean gateway.url?"),
        ('[model_rule]\nm = "haiku"\n', "model_rule is not", "did you mean model_rules?"),
        (  # edited by hand: `provider add` refuses the second name, one key would serve both
            '[providers.my-llm]\nkind = "openai"\n\n[providers.my_llm]\nkind = "openai"\n',
            "providers.my-llm and my_llm",
            "CCGATE_MY_LLM_API_KEY",
        ),
    ],
)
def test_wrong_values_name_file_key_and_expectation(config_file: Path, toml: str, key: str, expected: str) -> None:
    config_file.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(config_file)
    message = info.value.message
    assert message.startswith(f"{config_file}: {key}"), message
    assert expected in message or expected in (info.value.hint or ""), info.value.full_message()


def test_amounts_load_exactly_from_strings_ints_and_floats(config_file: Path) -> None:
    config_file.write_text(
        '[prices.m]\ninput = 0.1\noutput = "1,000.50"\ncache_read = 3\ncache_write_5m = 0.00001\n\n'
        '[[budgets]]\nperiod = "daily"\nlimit = "$20"\n\n'
        '[[budgets]]\nperiod = "weekly"\nlimit = "0.0001"\n'  # hand-written sub-cent limits are honoured
    )
    config = load_config(config_file)
    price = config.prices["m"]
    assert (price.input, price.output, price.cache_read, price.cache_write_5m) == (
        Decimal("0.1"),
        Decimal("1000.50"),
        Decimal(3),
        Decimal("0.00001"),
    )
    assert [b.limit_usd for b in config.budgets] == [Decimal(20), Decimal("0.0001")]


def test_amounts_are_saved_as_plain_decimals(config_file: Path) -> None:
    config = Config(
        prices={"m": PriceOverride(input=Decimal("1E-7"), output=Decimal("1E+3"))},
        budgets=(BudgetSettings(period="daily", limit_usd=Decimal("0.000000001"), warn_at=Decimal("5E-1")),),
    )
    save_config(config_file, config)
    text = config_file.read_text()
    assert "E" not in text
    raw = tomllib.loads(text)
    assert raw["prices"]["m"] == {"input": "0.0000001", "output": "1000"}
    assert raw["budgets"] == [{"period": "daily", "limit": "0.000000001", "warn_at": "0.5"}]
    assert load_config(config_file) == config


def test_save_keeps_unknown_keys_and_sections(config_file: Path) -> None:
    config_file.write_text(
        "# everything ccgate does not own stays\n"
        'timezone = "Europe/Berlin"\n\n'
        '[sidecar]\nport = 9999\nlog_level = "debug"\n\n'
        '[gateway]\nurl = "https://gw.example"\nteam = "infra"\n\n'
        '[model_rules]\n"my-model" = "haiku"\n\n'
        "[future_section]\nanswer = 42\nnested = { a = 1 }\n"
    )
    config = load_config(config_file)
    save_config(config_file, replace(config, timezone=None, gateway_url=None, model_rules={}))
    assert tomllib.loads(config_file.read_text()) == {
        "sidecar": {"port": 9999, "log_level": "debug"},
        "gateway": {"team": "infra"},  # ccgate unset `url` only
        "future_section": {"answer": 42, "nested": {"a": 1}},
    }
    save_config(config_file, replace(load_config(config_file), sidecar=Config().sidecar))
    assert tomllib.loads(config_file.read_text())["sidecar"] == {"log_level": "debug"}


def test_save_keeps_the_users_comments_and_layout(config_file: Path) -> None:
    """A hand-documented config survives `ccgate budget set` and `model set`: only the values ccgate changes
    change; comments, blank lines and the order of sections stay."""
    original = (
        "# team settings, see the wiki\n"
        'timezone = "Europe/Berlin"  # where the team sits\n'
        "\n"
        "[sidecar]\n"
        "port = 8787 # fixed, the firewall knows it\n"
        "\n"
        "# budgets agreed with finance\n"
        "[[budgets]]\n"
        'period = "daily" # per person\n'
        "limit = 20\n"
    )
    config_file.write_text(original)
    config = load_config(config_file)
    changed = replace(
        config,
        sidecar=replace(config.sidecar, port=9000),
        budgets=(*config.budgets, BudgetSettings(period="monthly", limit_usd=Decimal(300))),
        tiers={"haiku": TierSettings("haiku", ("groq/llama-3.3-70b-versatile",))},
    )
    save_config(config_file, changed)
    text = config_file.read_text()
    for kept in (
        "# team settings, see the wiki\n",
        'timezone = "Europe/Berlin"  # where the team sits\n',
        "port = 9000 # fixed, the firewall knows it\n",
        "# budgets agreed with finance\n",
        'period = "daily" # per person\n',
        "limit = 20\n",
    ):
        assert kept in text, (kept, text)
    assert load_config(config_file) == changed


def test_save_falls_back_to_plain_toml_when_the_edited_text_reads_back_different(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccgate.local import config_file as config_module

    config_file.write_text("# a comment\n[sidecar]\nport = 8787\n")
    monkeypatch.setattr(config_module, "_edited_text", lambda text, old, new: "[sidecar]\nport = 1\n")
    config = load_config(config_file)
    changed = replace(config, sidecar=replace(config.sidecar, port=9000))
    save_config(config_file, changed)
    text = config_file.read_text()
    assert "# a comment" not in text and "port = 1" not in text  # tomli-w's plain form, not the odd text
    assert load_config(config_file) == changed


def test_every_key_ccgate_writes_is_one_it_reads(config_file: Path) -> None:
    from ccgate.core.settings import (
        BUDGET_KEYS,
        GATEWAY_KEYS,
        PRICE_KEYS,
        PROVIDER_KEYS,
        SIDECAR_KEYS,
        STATUSLINE_KEYS,
        TIER_KEYS,
        TOP_KEYS,
        ProviderSettings,
        SidecarSettings,
        TierSettings,
    )

    everything = Config(
        sidecar=SidecarSettings(port=9999, max_body_mb=8, budget_wait_seconds=5.0),
        providers={"lab": ProviderSettings("lab", kind="openai", base_url="http://h:1/v1", supports_stream_usage=True)},
        tiers={"haiku": TierSettings("haiku", ("lab/m",))},
        model_rules={"my-model": "haiku"},
        prices={
            "m": PriceOverride(
                input=Decimal(1),
                output=Decimal(2),
                cache_read=Decimal("0.1"),
                cache_write_5m=Decimal("1.25"),
                cache_write_1h=Decimal(2),
            )
        },
        budgets=(BudgetSettings(period="daily", limit_usd=Decimal(5), project="/w", warn_at=Decimal("0.5")),),
        timezone="Europe/Berlin",
        gateway_url="https://gw.example",
        week_start="sunday",
        statusline_block=True,
    )
    save_config(config_file, everything)
    raw = tomllib.loads(config_file.read_text())
    assert set(raw) == set(TOP_KEYS)
    assert set(raw["sidecar"]) == set(SIDECAR_KEYS) and set(raw["gateway"]) == set(GATEWAY_KEYS)
    assert set(raw["providers"]["lab"]) == set(PROVIDER_KEYS) and set(raw["tiers"]["haiku"]) == set(TIER_KEYS)
    assert set(raw["prices"]["m"]) == set(PRICE_KEYS) and set(raw["budgets"][0]) == set(BUDGET_KEYS)
    assert set(raw["statusline"]) == set(STATUSLINE_KEYS)
    assert load_config(config_file) == everything


def test_keys_unlike_any_setting_are_the_users_own(config_file: Path) -> None:
    """Only near misses are refused: a note on a budget or a section of one's own stays allowed (and is kept)."""
    config_file.write_text(
        '[[budgets]]\nperiod = "daily"\nlimit = 5\nnote = "ask Sam first"\n\n'
        '[providers.lab]\nkind = "openai"\nlabel = "the lab box"\n\n[future_section]\nanswer = 42\n'
    )
    config = load_config(config_file)
    assert config.budgets[0].limit_usd == 5 and config.providers["lab"].kind == "openai"


def test_save_refuses_to_overwrite_a_broken_file(config_file: Path) -> None:
    config_file.write_text("this is [ not toml")
    with pytest.raises(ConfigError) as info:
        save_config(config_file, Config())
    assert str(config_file) in info.value.message
    assert config_file.read_text() == "this is [ not toml"
    config_file.write_text("[sidecar]\nprot = 9000\n")  # a typo is as broken: never saved over
    with pytest.raises(ConfigError):
        save_config(config_file, Config())
    assert config_file.read_text() == "[sidecar]\nprot = 9000\n"


@settings(deadline=None, max_examples=200)
@given(st.decimals(min_value=0, max_value=MAX_USD, places=9, allow_nan=False, allow_infinity=False))
def test_every_valid_amount_round_trips_through_text(amount: Decimal) -> None:
    assert parse_usd(format(amount, "f")) == amount
    assert parse_usd(f"${amount:,f}") == amount


@settings(deadline=None, max_examples=200)
@given(st.text(max_size=12))
def test_parse_usd_only_ever_returns_a_bounded_amount_or_refuses(text: str) -> None:
    try:
        amount = parse_usd(text)
    except AmountError as exc:
        assert exc.reason and exc.hint
    else:
        assert amount.is_finite() and 0 <= amount <= MAX_USD
        assert amount == amount.quantize(Decimal("0.000000001"))


def test_config_show_says_what_it_prints(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, out, _ = run_main(capsys, monkeypatch, "config", "show", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "print what it sets (defaults left out)" in text and "defaults included" not in text
    code, out, _ = run_main(capsys, monkeypatch, "config", "show")
    assert code == 0 and out == "# (empty: all defaults)\n"  # nothing set: nothing printed but that line
    (isolated_home / "config.toml").write_text('timezone = "Europe/Berlin"\n')
    code, out, _ = run_main(capsys, monkeypatch, "config", "show")
    assert code == 0 and out == 'timezone = "Europe/Berlin"\n\n'
