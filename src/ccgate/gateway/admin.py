"""The admin API, mounted at /admin as a sub-application behind admin tokens (placeholder until it is built)."""

from __future__ import annotations

from aiohttp import web


def create_admin_app() -> web.Application:
    """The admin sub-application; its handlers reach the store via `request.config_dict[keys.STORE]`."""
    return web.Application()
