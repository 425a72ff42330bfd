"""A browser-less client of the gateway's dashboard: signs in, keeps the cookie, reads each form's CSRF token."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class UiClient:
    """Talks to /ui as a same-origin browser would (Origin and Sec-Fetch-Site on every POST)."""

    def __init__(self, base: str) -> None:
        self.base = base
        # the gateway listens on an IP address: a default jar keeps no cookie for one
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def __aenter__(self) -> UiClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.close()

    @property
    def same_origin(self) -> dict[str, str]:
        return {"Origin": self.base, "Sec-Fetch-Site": "same-origin"}

    async def sign_in(self, token: str) -> aiohttp.ClientResponse:
        response = await self.http.post(
            self.base + "/ui/login", data={"token": token}, headers=self.same_origin, allow_redirects=False
        )
        await response.read()
        if response.status == 303:
            await self.get("/ui/")
        return response

    async def get(self, path: str, **kwargs: Any) -> tuple[aiohttp.ClientResponse, str]:
        kwargs.setdefault("allow_redirects", False)
        response = await self.http.get(self.base + path, **kwargs)
        text = await response.text()
        found = CSRF.search(text)
        if found:
            self.csrf = found.group(1)
        return response, text

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True, headers: dict[str, str] | None = None
    ) -> tuple[aiohttp.ClientResponse, str]:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf", self.csrf)
        response = await self.http.post(
            self.base + path,
            data=form,
            headers=self.same_origin if headers is None else headers,
            allow_redirects=False,
        )
        return response, await response.text()
