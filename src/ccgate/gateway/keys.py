"""Typed application keys shared by the gateway's app, its admin sub-application and its handlers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ccgate.gateway.auth import MissLimiter
from ccgate.storage.gateway.store import GatewayStore

# The one store of this process, opened in the app's cleanup context; sub-applications read it through
# `request.config_dict[STORE]`.
STORE = web.AppKey("store", GatewayStore)
# The admin token from CCGATE_GATEWAY_ADMIN_TOKEN (the first admin, before any named token exists), or None.
BOOTSTRAP_ADMIN_TOKEN = web.AppKey("bootstrap_admin_token", str)
# `gateway serve --allow-private-webhooks`: alert webhooks may name loopback and private hosts (absent: refused).
ALLOW_PRIVATE_WEBHOOKS = web.AppKey("allow_private_webhooks", bool)
# `--trusted-proxy` networks (see `auth.client_of`), and the cap on look-ups of unknown admin tokens per client.
TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple[Any, ...])
ADMIN_MISSES = web.AppKey("admin_misses", MissLimiter)
