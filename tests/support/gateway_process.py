"""Gateway instances as real processes (`python -m ccgate.gateway`), each on its own port, stopped by PID."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Instance:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """kill -9: no cleanup of any kind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@asynccontextmanager
async def gateway_process(
    db_url: str, folder: Path, *, environ: Mapping[str, str], args: tuple[str, ...] = ()
) -> AsyncIterator[Instance]:
    folder.mkdir(parents=True, exist_ok=True)
    port_file, log = folder / "port", folder / "gateway.log"
    command = [sys.executable, "-m", "ccgate.gateway", "--db", db_url, "--port", "0", "--port-file", str(port_file)]
    with log.open("wb") as sink:
        process = subprocess.Popen([*command, *args], stdout=sink, stderr=subprocess.STDOUT, env=dict(environ))
    instance = Instance("", process, log)
    try:
        for _ in range(600):
            if port_file.exists():
                break
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}: {instance.output()[-2000:]}")
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"the gateway did not start: {instance.output()[-2000:]}")
        instance.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        yield instance
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def instance_env(upstream_url: str, provider_key: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CCGATE_ANTHROPIC_BASE_URL": upstream_url, "CCGATE_ANTHROPIC_API_KEY": provider_key})
    return env
