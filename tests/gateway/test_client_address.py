"""The unknown-key look-up cap per client behind a trusted load balancer, and for the whole instance."""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any

import aiohttp
import pytest
from admin_testing import AdminCaller, admin_parent_app, error_of
from gateway_harness import running_gateway
from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.errors import AuthenticationError, RateLimitedError, UserInputError
from ccgate.gateway import keys
from ccgate.gateway.auth import KeyCache, admin_token_limiter, client_of, forwarded_hops, parse_trusted_proxies
from ccgate.storage.gateway import GatewayStore

LB = parse_trusted_proxies(["10.0.0.0/8"])


def test_the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() -> None:
    assert client_of("203.0.113.9", ["198.51.100.7"], ()) == "203.0.113.9"  # no proxy trusted: header ignored
    assert client_of("203.0.113.9", ["198.51.100.7"], LB) == "203.0.113.9"  # an untrusted peer: ignored
    assert client_of("10.0.0.2", ["198.51.100.7"], LB) == "198.51.100.7"
    # the nearest address that is not a trusted proxy: what the client wrote on the left does not count
    assert client_of("10.0.0.2", ["6.6.6.6, 198.51.100.7, 10.1.1.1"], LB) == "198.51.100.7"
    assert client_of("10.0.0.2", ["6.6.6.6", "198.51.100.7:5123"], LB) == "198.51.100.7"
    assert client_of("10.0.0.2", [], LB) == "10.0.0.2"  # a request from the balancer itself
    assert client_of("10.0.0.2", ["not-an-address"], LB) == "10.0.0.2"
    # IPv6 clients count per /64: one host holds a whole /64
    assert client_of("10.0.0.2", ["[2001:db8:1:2::99]:443"], LB) == "2001:db8:1:2::/64"
    assert client_of("2001:db8:1:2::5", [], ()) == client_of("2001:db8:1:2::6", [], ())


def test_rfc_7239_forwarded_names_the_client_like_x_forwarded_for() -> None:
    def via(*lines: str, peer: str = "10.0.0.2", xff: tuple[str, ...] = ()) -> str | None:
        return client_of(peer, xff, LB, lines)

    assert via("for=198.51.100.7") == "198.51.100.7"
    assert via("for=198.51.100.7", peer="203.0.113.9") == "203.0.113.9"  # an untrusted peer: ignored
    assert client_of("10.0.0.2", (), (), ["for=198.51.100.7"]) == "10.0.0.2"  # no proxy trusted: ignored
    # the nearest hop that is not a trusted proxy; parameter names in any case, other parameters ignored
    assert via("for=6.6.6.6, For=198.51.100.7;proto=https;by=10.0.0.2, for=10.1.1.1") == "198.51.100.7"
    assert via("for=6.6.6.6", 'for="198.51.100.7:4711";host="gw.example"') == "198.51.100.7"
    assert via('for="[2001:db8:cafe::17]:4711"') == "2001:db8:cafe::/64"
    assert via('for="[2001:db8:cafe::17]"') == "2001:db8:cafe::/64"
    # a hop the proxy does not name (unknown, an obfuscated id, no `for`) stops the walk at that proxy
    for hidden in (
        "for=unknown",
        "for=_hidden",
        'for="_SEVKISEK"',
        "by=10.0.0.2;proto=http",
        "for=6.6.6.6, for=unknown",
    ):
        assert via(hidden) == "10.0.0.2", hidden
    # X-Forwarded-For wins when both are there: what the balancer writes there cannot be moved by a Forwarded
    assert via("for=6.6.6.6", xff=("198.51.100.7",)) == "198.51.100.7"
    assert via("for=198.51.100.7", xff=("not-an-address",)) == "10.0.0.2"


@pytest.mark.parametrize(
    "line",
    [
        'for="1.2.3.4',  # a quote left open
        'for="1.2.3.4, for=6.6.6.6',  # ... which would swallow what a proxy appended to the line
        'for=6.6.6.6;x=", for=6.6.6.6',
        'for="6.6.6.6"x',
        "for=6.6.6.6;for=7.7.7.7",  # `for` twice
        "for 6.6.6.6",
        "=6.6.6.6",
        "for=",
        'for="6.6.6.6\\',
        "for=6.6.6.6 7.7.7.7",
        "for=\u00e9\u0000",
        ";" * 10_000,
        ",".join(["for=6.6.6.6"] * 5000) + ", for=unknown",
    ],
)
def test_a_malformed_forwarded_element_names_nobody(line: str) -> None:
    """Nothing in a malformed element is believed: the count stays with the trusted proxy."""
    assert client_of("10.0.0.2", (), LB, [line]) == "10.0.0.2"


def test_a_clients_open_quote_cannot_swallow_the_line_its_proxy_added() -> None:
    assert client_of("10.0.0.2", (), LB, ['for="6.6.6.6', "for=198.51.100.7"]) == "198.51.100.7"
    assert client_of("10.0.0.2", (), LB, ['for=6.6.6.6;x="', "for=198.51.100.7"]) == "198.51.100.7"


@settings(deadline=None, max_examples=300)
@given(st.lists(st.text(max_size=80), max_size=4), st.lists(st.text(max_size=40), max_size=3))
def test_no_forwarded_header_makes_the_client_address_raise(lines: list[str], xff: list[str]) -> None:
    found = client_of("10.0.0.2", xff, LB, lines)
    assert found is None or isinstance(found, str)
    assert all(hop is None or isinstance(hop, str) for hop in forwarded_hops(lines))


def test_a_trusted_proxy_must_be_a_cidr() -> None:
    assert parse_trusted_proxies(["10.0.0.1", "fd00::/8"]) == (
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    with pytest.raises(UserInputError, match="not an address or CIDR"):
        parse_trusted_proxies(["10.0.0.0/33"])


async def test_a_flood_of_random_keys_from_many_clients_hits_the_instance_wide_cap(store: GatewayStore) -> None:
    cache = KeyCache(store, unknown_per_second=1000, unknown_total_per_second=5)
    for index in range(5):
        with pytest.raises(AuthenticationError):
            await cache.authenticate(f"sk-cg-random-{index}", f"198.51.100.{index}")
    with pytest.raises(RateLimitedError, match="at this gateway"):
        await cache.authenticate("sk-cg-random-x", "198.51.100.200")
    with pytest.raises(RateLimitedError, match="at this gateway"):  # no client spelling escapes it
        await cache.authenticate("sk-cg-random-y", None)


async def test_clients_behind_a_trusted_balancer_have_their_own_allowance(db_url: str) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}

    async def statuses(url: str, forwarded_for: str) -> list[int]:
        found = []
        async with aiohttp.ClientSession() as http:
            for index in range(2):
                async with http.post(
                    f"{url}/v1/messages",
                    headers={"x-api-key": f"sk-cg-{forwarded_for}-{index}", "x-forwarded-for": forwarded_for},
                    json=body,
                ) as reply:
                    found.append(reply.status)
        return found

    trusted = ("127.0.0.0/8",)
    async with running_gateway(db_url, unknown_keys_per_second=0.001, trusted_proxies=trusted) as gateway:
        assert await statuses(gateway.url, "198.51.100.1") == [401, 429]
        assert await statuses(gateway.url, "198.51.100.2") == [401, 429]  # another client, its own allowance
    async with running_gateway(db_url, unknown_keys_per_second=0.001, org=False) as gateway:
        # without --trusted-proxy the header is anyone's to write: everyone shares the peer's allowance
        assert await statuses(gateway.url, "198.51.100.3") == [401, 429]
        assert await statuses(gateway.url, "198.51.100.4") == [429, 429]


async def test_behind_a_trusted_balancer_forwarded_names_the_client_and_garbage_never_500s(db_url: str) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}

    numbers = itertools.count()

    async def statuses(url: str, headers: dict[str, str], count: int = 2) -> list[int]:
        found = []
        async with aiohttp.ClientSession() as http:
            for _ in range(count):
                key = f"sk-cg-unknown-{next(numbers)}"  # never one the negative cache already knows
                async with http.post(f"{url}/v1/messages", headers={"x-api-key": key, **headers}, json=body) as reply:
                    found.append(reply.status)
                    assert reply.content_type == "application/json"
        return found

    garbage = [
        'for="1.2.3.4',
        "for=unknown",
        "for=_hidden;proto=https",
        ";;;,,,;;;",
        "for=" + "9" * 4000,
        'for="[::1]:99999999999", for="[zz::]"',
    ]
    async with running_gateway(db_url, unknown_keys_per_second=0.001, trusted_proxies=("127.0.0.0/8",)) as gateway:
        assert await statuses(gateway.url, {"forwarded": 'for="198.51.100.1:4711"'}) == [401, 429]
        assert await statuses(gateway.url, {"forwarded": 'for="[2001:db8:1::7]:443"'}) == [401, 429]
        # X-Forwarded-For wins over Forwarded: a new Forwarded address does not buy 198.51.100.1 a new allowance
        both = {"x-forwarded-for": "198.51.100.1", "forwarded": "for=198.51.100.9"}
        assert await statuses(gateway.url, both, 1) == [429]
        # what names nobody counts against the balancer (the peer): the first one spends its allowance
        for line in garbage:
            assert (await statuses(gateway.url, {"forwarded": line}, 1))[0] in (401, 429), line
        assert await statuses(gateway.url, {"forwarded": garbage[0]}, 1) == [429]


async def test_guessed_admin_tokens_are_capped_like_unknown_keys(store: GatewayStore, aiohttp_client: Any) -> None:
    app = admin_parent_app(store)
    app[keys.ADMIN_MISSES] = admin_token_limiter(0.001, 1000)  # one wrong guess per client, then 429
    api = AdminCaller(await aiohttp_client(app))
    assert (await api("GET", "/customers", token="cg-admin-guess-1"))[0] == 401
    status, body = await api("GET", "/customers", token="cg-admin-guess-2")
    assert status == 429 and "unknown admin tokens" in error_of(body)
    assert (await api("GET", "/customers"))[0] == 200  # the bootstrap token is no database read: never capped
