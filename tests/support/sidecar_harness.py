"""An in-process sidecar in front of a scripted upstream, both on 127.0.0.1 port 0, for proxy tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from scripted_upstream import ScriptedUpstream

from ccgate.core.settings import Config
from ccgate.local.config_file import load_config
from ccgate.local.paths import Paths, resolve_paths
from ccgate.sidecar.app import PROXY, create_app, create_runner
from ccgate.sidecar.process import LAUNCH_HEADER, TOKEN_HEADER, ensure_token


@dataclass
class Harness:
    app: web.Application
    url: str
    token: str
    paths: Paths
    upstream: ScriptedUpstream

    @property
    def headers(self) -> dict[str, str]:
        """What `ccgate launch` makes Claude Code send."""
        return {TOKEN_HEADER: self.token}

    def launch_headers(self, launch_id: str) -> dict[str, str]:
        return {TOKEN_HEADER: self.token, LAUNCH_HEADER: launch_id}

    def flush(self) -> None:
        writer = self.app[PROXY].deps.ledger
        assert writer.flush(timeout=10.0)  # type: ignore[attr-defined]

    def rows(self) -> list[dict[str, Any]]:
        """Ledger rows after everything queued so far is committed, oldest first."""
        from ccgate.storage.ledger import open_ledger

        self.flush()
        db = open_ledger(self.paths.ledger_file)
        try:
            return list(db.query("select * from requests order by started_at, rowid"))
        finally:
            db.close()


@asynccontextmanager
async def running_sidecar(
    *,
    config: Config | None = None,
    environ: Mapping[str, str] | None = None,
    upstream: ScriptedUpstream | None = None,
) -> AsyncIterator[Harness]:
    own_upstream = upstream is None
    upstream = upstream or ScriptedUpstream()
    if own_upstream:
        await upstream.start()
    env = dict(os.environ)
    env["CCGATE_ANTHROPIC_BASE_URL"] = upstream.url
    env.update(environ or {})
    paths = resolve_paths(env).ensure()
    config = config or load_config(paths.config_file)
    token = ensure_token(paths)
    app = create_app(paths, config, token=token, environ=env)
    runner = create_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield Harness(app=app, url=f"http://127.0.0.1:{port}", token=token, paths=paths, upstream=upstream)
    finally:
        await runner.cleanup()
        if own_upstream:
            await upstream.stop()
