"""The user's timezone for day/week/month boundaries: config, else TZ (IANA or POSIX), else the system's."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ccgate.core.settings import named_zone


def resolve_timezone(name: str | None = None, environ: Mapping[str, str] | None = None) -> tzinfo:
    """The user's timezone: the configured IANA name, else TZ, else /etc/localtime, else UTC."""
    if name:
        return named_zone(name)
    env = os.environ if environ is None else environ
    tz_env = env.get("TZ", "").lstrip(":")
    if tz_env:
        try:
            return ZoneInfo(tz_env)
        except (ZoneInfoNotFoundError, ValueError):
            # A POSIX TZ string such as `XYZ-5` or `EST5EDT,M3.2.0,M11.1.0`: honour it as the C library does.
            return _posix_timezone(tz_env, env)
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


_POSIX_STD = re.compile(r"^(?P<name>[A-Za-z]{3,}|<[+-]?[A-Za-z0-9]+>)(?P<sign>[+-]?)(?P<h>\d{1,2})(?::(?P<m>\d{2}))?$")


def _posix_timezone(text: str, env: Mapping[str, str]) -> tzinfo:
    """A POSIX TZ string as a fixed offset: parsed when it has no DST rule (`XYZ-5` is UTC+5: POSIX counts
    west-positive), else the offset the C library computes now (when TZ is this process's own)."""
    match = _POSIX_STD.match(text)
    if match is not None:
        offset = timedelta(hours=int(match["h"]), minutes=int(match["m"] or 0))
        if offset < timedelta(hours=24):
            return timezone(offset if match["sign"] == "-" else -offset, match["name"].strip("<>"))
    if env.get("TZ", "").lstrip(":") == os.environ.get("TZ", "").lstrip(":"):
        local = datetime.now().astimezone().tzinfo
        if local is not None:
            return local
    return UTC
