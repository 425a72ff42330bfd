"""A sidecar start that fails part-way stops what it had started (one cleanup context per resource)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ccgate.core.settings import Config, TierSettings
from ccgate.errors import ConfigError
from ccgate.local.paths import resolve_paths
from ccgate.sidecar.app import STATE, create_app, create_runner
from ccgate.sidecar.process import ensure_token


def writer_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "ccgate-ledger-writer"]


async def test_unknown_provider_fails_the_start_and_stops_the_ledger_writer(isolated_home: Path) -> None:
    assert writer_threads() == []
    paths = resolve_paths().ensure()
    config = Config(tiers={"haiku": TierSettings("haiku", ("nosuch/claude-haiku-4-5",))})
    app = create_app(paths, config, token=ensure_token(paths))
    runner = create_runner(app)
    with pytest.raises(ConfigError, match="nosuch"):
        await runner.setup()
    writer = app[STATE].writer
    assert writer is not None  # the writer had started before the config was found unusable ...
    assert writer_threads() == []  # ... and was stopped with the failed start
    # the ledger is usable by the next start, in this process too
    good = create_runner(create_app(paths, Config(), token=ensure_token(paths)))
    await good.setup()
    assert len(writer_threads()) == 1
    await good.cleanup()
    assert writer_threads() == []
