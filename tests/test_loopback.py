"""One loopback set: the sidecar's Host check, its bind address and its own-URL check agree on what is local."""

from __future__ import annotations

import pytest

from ccgate.core.loopback import is_loopback_host
from ccgate.core.providers import is_loopback_url


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1:8787", True),
        ("LOCALHOST:1", True),
        ("[::1]:8787", True),
        ("[::1]", True),
        ("::1", True),
        ("[::1", False),
        ("[localhost]:80", False),
        ("127.0.0.1.evil.example:80", False),
        ("", False),
        (None, False),
    ],
)
def test_host_header(host: str | None, local: bool) -> None:
    assert is_loopback_host(host) is local


def test_urls_spell_the_same_names() -> None:
    for url in ("http://127.0.0.1:8787", "http://LocalHost:8787/", "http://[::1]:8787"):
        assert is_loopback_url(url, [8787])
    assert not is_loopback_url("http://[::2]:8787", [8787])
