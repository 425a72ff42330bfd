"""A scripted upstream process whose streams stop after `message_start` and hang (for kill -9 tests).

python tests/support/hang_upstream.py PORT_FILE
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from scripted_upstream import RecordedRequest, ScriptedUpstream, StreamReply, Usage, text_events


def hang_after_start(request: RecordedRequest) -> StreamReply:
    events = text_events("never finished", model=request.model, usage=Usage(input_tokens=100, output_tokens=50))
    return StreamReply(events=events[:2], then="hang")


async def serve(port_file: Path) -> None:
    upstream = await ScriptedUpstream(hang_after_start).start()
    port_file.write_text(str(upstream.port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await upstream.stop()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
