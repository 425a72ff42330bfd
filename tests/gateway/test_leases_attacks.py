"""Budget leases (`gateway.leases`) attacked from outside: stale room, cancelled admissions, leases ending while
their requests are in flight, the database away, rate limits at a minute's edge -- budgets and rate limits stay
exact, and no reservation is left behind."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import anthropic
import pytest
from gateway_harness import running_gateway
from gateway_testing import StoreFactory, acme_dev, budget_state, finished_record, key_meta, one_rate_minute
from scripted_upstream import ErrorReply, TextReply, Usage

from ccgate.errors import BudgetExceededError, RateLimitedError
from ccgate.gateway import admission as gateway_admission
from ccgate.gateway.admission import GatewayAdmission, Hold
from ccgate.gateway.ledger import GatewayLedger, Owner
from ccgate.storage.gateway import GatewayStore
from ccgate.storage.gateway.db import DatabaseUnavailableError
from ccgate.storage.gateway.records import KeyIdentity

TTL = timedelta(minutes=5)
MODEL = "claude-sonnet-4-5"


@pytest.fixture(autouse=True)
def short_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 0.3)


# budget holds (not an instance's heartbeat row, which holds no budget)
_HOLDS = "SELECT id, amount_nanos FROM reservations WHERE id IN (SELECT reservation_id FROM reservation_budgets)"


async def _settled(store: GatewayStore, who: KeyIdentity, expected: list[tuple[int, int]]) -> None:
    """Poll (about 10 s) until the budgets read `expected` and no budget hold is left."""
    state: list[tuple[int, int]] = []
    for _ in range(200):
        state = await budget_state(store, who)
        if state == expected and not await store.db.fetch(_HOLDS):
            return
        await asyncio.sleep(0.05)
    rows = await store.db.fetch(_HOLDS)
    raise AssertionError(f"budgets {state} (reservations {rows}), expected {expected} and none")


async def _admit_until_refused(admission: GatewayAdmission, who: KeyIdentity, bound: int) -> list[Hold]:
    """Admit requests without settling any, until one is refused (the admission's short wait gives up)."""
    holds: list[Hold] = []
    for _ in range(200):
        try:
            holds.append(await admission.admit(key_meta(who), reserve_nanos=bound, model=MODEL))
        except BudgetExceededError:
            return holds
    raise AssertionError("200 requests admitted: the budget never stopped them")


async def test_a_lease_sized_on_a_stale_room_never_takes_more_than_is_left(store: GatewayStore) -> None:
    """The room an instance saw last can be long gone (other keys or instances spent it): a lease sized on it must
    not be admitted past the limit (an admission with nothing else reserved is admitted whatever its size, the
    one request's overshoot the design allows -- never 64 requests' worth)."""
    who = await acme_dev(store)
    bound, limit = 1_000_000, 10**9
    await store.create_budget(level="team", target="core", limit_nanos=limit, period="1d")
    mine = GatewayAdmission(store, "gw-1", ttl=TTL, wait_timeout=0.2, max_wait=0.2, rate_limited=frozenset)
    other = GatewayAdmission(store, "gw-2", ttl=TTL, rate_limited=frozenset)
    mine.settle(await mine.admit(key_meta(who), reserve_nanos=bound, model=MODEL), bound)  # sees a large room
    # another instance spends all but two requests' worth meanwhile
    big = await other.admit(key_meta(who), reserve_nanos=limit - 3 * bound, model=MODEL)
    other.settle(big, limit - 3 * bound)
    await _settled(store, who, [(limit - 2 * bound, 0)])
    holds = await _admit_until_refused(mine, who, bound)
    # two fit; a third may overshoot (admitted while nothing else is reserved), never more
    assert len(holds) <= 3, f"{len(holds)} requests admitted with room for 2"
    for hold in holds:
        mine.settle(hold, bound)
    await _settled(store, who, [(limit - 2 * bound + len(holds) * bound, 0)])
    await mine.close()
    await other.close()


async def _until_rated(admission: GatewayAdmission) -> None:
    """Until the live lease's request slots are counted (in the background), about 10 s."""
    for _ in range(1_000):
        if any(lease.rated for lease in admission._leases.values()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the lease's request slots were never counted")


async def test_requests_a_lease_cannot_hold_use_its_request_slots(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request too big for its key's lease is admitted on its own: it must use one of the lease's request slots,
    not count one more -- else the key is told 429 while fewer than rpm of its requests were admitted."""
    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 60.0)
    one_rate_minute(monkeypatch)
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**7, period="1d")
    rpm = 40
    await store.set_rate_limit(level="team", target="core", rpm=rpm, tpm=None)
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=lambda: frozenset({who.team.id}))
    holds = [await admission.admit(key_meta(who), reserve_nanos=1_000, model=MODEL) for _ in range(2)]
    assert holds[1].lease is not None
    await _until_rated(admission)
    # too big for the lease (64 small requests' worth), too big to take one of its own (1/32 of the room)
    refused = 0
    for _ in range(rpm):
        try:
            holds.append(await admission.admit(key_meta(who), reserve_nanos=100_000, model=MODEL))
        except RateLimitedError:
            refused += 1
    assert len(holds) == rpm and refused == 2
    for hold in holds:
        admission.release(hold)
    await admission.close()
    counted = await store.db.fetchone("SELECT sum(requests) FROM rate_counters")
    assert counted is not None and int(counted[0]) == rpm


async def test_settles_and_a_lease_given_up_while_the_database_was_away_are_written_when_it_is_back(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is away longer than a settle's or release's tries (`DB_RETRIES`) but not than the holds' TTL:
    the heartbeat renewed the lease's row for as long as the instance lived (64 requests' room), and the spend of
    its requests was lost. Both are written once the database is back."""
    monkeypatch.setattr(gateway_admission, "DB_RETRIES", 1)
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    admission = GatewayAdmission(store, "gw-1", ttl=timedelta(seconds=1.5), rate_limited=frozenset)
    holds = [await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL) for _ in range(3)]
    assert holds[2].lease is not None
    away = True
    tried: list[str] = []

    def unless_away(name: str) -> None:
        real = getattr(store, name)

        async def call(*args: object, **kwargs: object) -> object:
            tried.append(name)
            if away:
                raise DatabaseUnavailableError("lost the gateway's database: ConnectionRefusedError")
            return await real(*args, **kwargs)

        monkeypatch.setattr(store, name, call)

    for name in ("settle", "shrink", "release"):
        unless_away(name)
    heartbeat = asyncio.create_task(admission.run_heartbeat())
    try:
        for hold in holds:
            admission.settle(hold, 4_000)
        for _ in range(1_000):  # the settles give up, and the lease ends
            if tried.count("settle") >= 3 and {"shrink", "release"} & set(tried) and not admission._tasks:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"never gave up: {tried}")
        away = False
        await _settled(store, who, [(12_000, 0)])
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
    await admission.close()


async def test_streams_through_the_gateway_spend_their_budgets_exactly(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTP, as Claude Code sends them: concurrent streams of two keys, far from their budgets (so admitted
    from leases), some refused by the provider (released). Every budget ends holding exactly the rows' cost, each
    row charged once, and no hold is left."""
    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 1.0)
    async with running_gateway(db_url) as gateway:
        store = gateway.store
        await store.create_budget(level="team", target="core", limit_nanos=10**13, period="1d")
        await store.create_budget(level="key", target="ada", limit_nanos=10**13, period="1mo")
        asked: list[int] = []
        real = store.admit

        async def counted(**kwargs: object) -> object:
            asked.append(1)
            return await real(**kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "admit", counted)
        replies = [TextReply("ok", usage=Usage(input_tokens=1_000 + n, output_tokens=50 + n)) for n in range(36)]
        gateway.upstream.enqueue(*replies, *[ErrorReply(400, "invalid_request_error")] * 4)

        async def ask(key: str) -> None:
            client = gateway.client(gateway.keys[key])
            async with client.messages.stream(
                model=MODEL, max_tokens=2_000, messages=[{"role": "user", "content": "hi"}]
            ) as events:
                await events.get_final_message()

        for _ in range(2):  # the first requests learn the room; the rest are admitted from leases
            await ask("ada")
            await ask("bob")
        outcomes = await asyncio.gather(*(ask(("ada", "bob")[n % 2]) for n in range(36)), return_exceptions=True)
        assert sum(isinstance(o, anthropic.BadRequestError) for o in outcomes) == 4
        assert all(o is None or isinstance(o, anthropic.BadRequestError) for o in outcomes)
        assert len(asked) < 20  # leases admitted most of them
        rows = await gateway.rows()
        assert len(rows) == 40
        cost = {name: 0 for name in ("ada", "bob")}
        for row in rows:
            cost["ada" if row.key_id == await gateway.key_id("ada") else "bob"] += row.record.cost.nanos or 0
        assert all(cost.values())
        ada = await store.authenticate_key(gateway.keys["ada"])
        assert ada is not None
        # customer (no budget), team, key: the team's spend is both keys', the key's only ada's
        await _settled(store, ada, [(cost["ada"] + cost["bob"], 0), (cost["ada"], 0)])
        charged = await store.db.fetchone("SELECT sum(charged_nanos) FROM requests")
        assert charged is not None and int(charged[0]) == cost["ada"] + cost["bob"]


async def test_a_cancelled_lease_taking_admission_holds_nothing_and_strands_no_one(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client of the admission taking a lease leaves while its round trip runs; another request of the key
    waits for that lease meanwhile. The waiter goes on (and takes a lease itself), the cancelled one's reservation
    is given back, and nothing is left marked as being taken."""
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=frozenset)
    admission.settle(await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL), 1_000)
    entered, go = asyncio.Event(), asyncio.Event()
    real = store.admit

    async def held(**kwargs: object) -> object:
        entered.set()
        await go.wait()
        return await real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "admit", held)
    taker = asyncio.create_task(admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL))
    await entered.wait()
    assert admission._leasing
    waiter = asyncio.create_task(admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL))
    await asyncio.sleep(0.01)
    taker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await taker
    go.set()
    hold = await asyncio.wait_for(waiter, 30)
    assert hold.lease is not None and not admission._leasing
    admission.settle(hold, 2_000)
    await _settled(store, who, [(3_000, 0)])
    await admission.close()


async def test_a_budget_lowered_through_this_store_gives_this_instances_leases_back_at_once(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease's row still reserves room for 64 requests when an admin lowers the budget below that: another
    key's request must not wait for the lease's life (nor get 402 once its wait finds nothing moving)."""
    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 60.0)
    who = await acme_dev(store)
    ops = await store.authenticate_key((await store.create_key(team="core", name="ops")).plaintext)
    assert ops is not None
    budget = await store.create_budget(level="team", target="core", limit_nanos=10**9, period="1d")
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, wait_timeout=1.0, max_wait=1.0, rate_limited=frozenset)
    holds = [await admission.admit(key_meta(who), reserve_nanos=1_000_000, model=MODEL) for _ in range(2)]
    assert holds[1].lease is not None
    for hold in holds:
        admission.settle(hold, 1_000_000)
    for _ in range(200):
        if (await budget_state(store, who))[0][0] == 2_000_000:
            break
        await asyncio.sleep(0.05)
    await store.update_budget(budget.id, limit_nanos=7_000_000)  # room for five more
    hold = await admission.admit(key_meta(ops), reserve_nanos=1_000_000, model=MODEL)
    admission.settle(hold, 1_000_000)
    await _settled(store, who, [(3_000_000, 0)])
    await admission.close()


async def test_another_instances_unused_lease_slots_never_get_a_request_429(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instance 1's lease counted request slots it does not use; instance 2's requests of the key reach the rpm
    with them. They must be admitted up to the limit once the lease gives its slots back -- 429 only when rpm
    requests were admitted."""
    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 2.0)
    one_rate_minute(monkeypatch)
    first = await open_store()
    who = await acme_dev(first)
    await first.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    rpm = 40
    await first.set_rate_limit(level="team", target="core", rpm=rpm, tpm=None)
    second = await open_store()
    limited = lambda: frozenset({who.team.id})  # noqa: E731
    leasing = GatewayAdmission(first, "gw-1", ttl=TTL, rate_limited=limited)
    other = GatewayAdmission(second, "gw-2", ttl=TTL, rate_limited=limited)
    holds = [await leasing.admit(key_meta(who), reserve_nanos=1_000, model=MODEL) for _ in range(2)]
    await _until_rated(leasing)
    refused = 0
    for _ in range(rpm):  # too big for a lease of their own: each counted
        try:
            holds.append(await other.admit(key_meta(who), reserve_nanos=10**10, model=MODEL))
        except RateLimitedError:
            refused += 1
    assert (len(holds), refused) == (rpm, 2)
    for hold in holds:
        (leasing if hold in holds[:2] else other).release(hold)
    await leasing.close()
    await other.close()
    counted = await first.db.fetchone("SELECT sum(requests) FROM rate_counters")
    assert counted is not None and int(counted[0]) == rpm


async def test_a_parked_write_that_still_fails_never_stops_the_heartbeat_renewing_live_holds(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One write keeps failing (its statement, say, while the rest of the database works): the live requests'
    holds are renewed all the same, or they would lapse and other instances admit past the limit."""
    monkeypatch.setattr(gateway_admission, "DB_RETRIES", 1)
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    admission = GatewayAdmission(store, "gw-1", ttl=timedelta(seconds=1.5), rate_limited=frozenset)
    gone = await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL)
    live = await admission.admit(key_meta(who), reserve_nanos=10**9, model=MODEL)  # too big for a lease: its own row
    assert live.reservation is not None and live.reservation.id != gone.reservation.id  # type: ignore[union-attr]

    async def failing(*args: object, **kwargs: object) -> bool:
        raise DatabaseUnavailableError("lost the gateway's database: ConnectionResetError")

    monkeypatch.setattr(store, "release", failing)
    admission.release(gone)
    heartbeat = asyncio.create_task(admission.run_heartbeat())
    try:
        sql = "SELECT expires_at FROM reservations WHERE id = ?"
        first = await store.db.fetchone(sql, (live.reservation.id,))
        for _ in range(200):
            await asyncio.sleep(0.05)
            later = await store.db.fetchone(sql, (live.reservation.id,))
            if later is not None and first is not None and later[0] > first[0]:
                break
        else:
            raise AssertionError("the live hold was never renewed")
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
    monkeypatch.undo()
    admission.settle(live, 1_000)
    await admission.close()  # the parked release written then
    await _settled(store, who, [(1_000, 0)])


async def test_slots_a_lease_counted_at_the_end_of_a_minute_are_not_used_in_the_next(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slots taken at :59.9 count in that minute: once the next one begins the lease admits no more with them,
    gives the unused back to the minute they were taken in, and every minute counts exactly its requests."""
    from ccgate.storage.gateway import store as store_module

    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 60.0)
    clock = [datetime.now(UTC).replace(second=59, microsecond=900_000)]
    monkeypatch.setattr(gateway_admission, "utcnow", lambda: clock[0])
    monkeypatch.setattr(store_module, "utcnow", lambda: clock[0])
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    await store.set_rate_limit(level="team", target="core", rpm=1_000, tpm=None)
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=lambda: frozenset({who.team.id}))
    holds = [await admission.admit(key_meta(who), reserve_nanos=1_000, model=MODEL) for _ in range(2)]
    await _until_rated(admission)
    holds += [await admission.admit(key_meta(who), reserve_nanos=1_000, model=MODEL) for _ in range(5)]
    assert all(hold.lease is holds[1].lease for hold in holds[1:])
    clock[0] += timedelta(seconds=0.2)
    for _ in range(5):
        holds.append(await admission.admit(key_meta(who), reserve_nanos=1_000, model=MODEL))
        await asyncio.sleep(0.01)
    assert holds[-1].lease is not holds[1].lease
    for hold in holds:
        admission.settle(hold, 1_000)
    await admission.close()
    counted = await store.db.fetch("SELECT minute, requests FROM rate_counters ORDER BY minute")
    assert [int(requests) for _, requests in counted] == [7, 5]


async def test_two_gateway_instances_on_their_own_stores_spend_a_budget_exactly(open_store: StoreFactory) -> None:
    """As `test_leases`' two-instance test, each instance with its own store (its own pool or SQLite connection),
    requests of two keys: exact to the nano, and the rest refused only once spent reaches the limit."""
    stores = [await open_store(), await open_store()]
    who = await acme_dev(stores[0])
    ops = await stores[0].authenticate_key((await stores[0].create_key(team="core", name="ops")).plaintext)
    assert ops is not None
    bound, limit = 100, 60_000
    await stores[0].create_budget(level="team", target="core", limit_nanos=limit, period="1d")
    instances = [
        GatewayAdmission(stores[n], f"gw-{n}", ttl=TTL, wait_timeout=5.0, max_wait=30.0, rate_limited=frozenset)
        for n in (0, 1)
    ]
    admitted = [0, 0]
    messages: list[str] = []

    async def worker(n: int) -> None:
        admission, key = instances[n % 2], (who, ops)[n // 2 % 2]
        while True:
            try:
                hold = await admission.admit(key_meta(key), reserve_nanos=bound, model=MODEL)
            except BudgetExceededError as refused:
                messages.append(refused.message)
                return
            admitted[n % 2] += 1
            await asyncio.sleep(0)
            admission.settle(hold, bound)
            await asyncio.sleep(0.002)

    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(16))), 120)
    await _settled(stores[1], who, [(limit, 0)])
    assert sum(admitted) == limit // bound and all(admitted)
    assert len(messages) == 16 and all("reached" in message for message in messages)
    for admission in instances:
        await admission.close()


@pytest.mark.parametrize("written_between", [False, True])
async def test_leased_requests_reusing_a_request_id_are_each_charged_once(
    store: GatewayStore, written_between: bool
) -> None:
    """A client sends one `x-ccgate-request-id` for two requests admitted from one lease (the first's row still
    queued, or already written): each is charged once under its own row, and the lease's row goes."""
    who = await acme_dev(store)
    await store.create_budget(level="key", target="dev", limit_nanos=10**12, period="1d")
    ledger = GatewayLedger(store, "gw-1")
    ledger.start()
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger, rate_limited=frozenset)
    owner = Owner(who.key.id, who.team.id, who.team.customer_id)
    costs = [3_000, 5_000, 7_000]
    for index, (request_id, nanos) in enumerate(zip(("first", "same", "same"), costs, strict=True)):
        hold = await admission.admit(key_meta(who, request_id), reserve_nanos=50_000, model=MODEL)
        assert (hold.lease is not None) == (index > 0)
        record = finished_record(request_id, nanos)
        admission.settle(hold, nanos)
        ledger.enqueue(owner, record)
        if written_between:
            assert await ledger.flush()
    await _settled(store, who, [(sum(costs), 0)])
    charged = await store.db.fetch("SELECT charged_nanos FROM requests ORDER BY charged_nanos")
    assert [int(row[0]) for row in charged] == costs
    await admission.close()
    await ledger.close()


async def test_a_request_of_an_ended_lease_lowers_its_row_once_its_input_is_known(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long reply admitted from a lease that has ended: at `message_start` its hold comes down to its real input
    plus its output bound, and the lease's row with it -- as a request admitted on its own lowers its row -- so
    requests that the old bound kept out get in rather than wait for the whole reply."""
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=frozenset)
    first = await admission.admit(key_meta(who), reserve_nanos=1_000_000, model=MODEL)
    long = await admission.admit(key_meta(who), reserve_nanos=1_000_000, model=MODEL)
    assert long.lease is not None
    admission.settle(first, 1_000_000)
    lease = long.lease
    for _ in range(200):  # the lease ends (its life is 0.3 s here); its row keeps at least the long reply's bound
        if lease.ended and (await budget_state(store, who))[0][0] == 1_000_000:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the lease never ended, or the first request's spend was never written")
    admission.shrink(long, 200_000)  # message_start
    for _ in range(200):
        if await store.db.fetch(_HOLDS) == [(lease.reservation.id, 200_000)]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the lease's row still holds the old bound: {await store.db.fetch(_HOLDS)}")
    admission.settle(long, 150_000)
    await _settled(store, who, [(1_150_000, 0)])
    await admission.close()


async def test_a_lease_stops_admitting_once_its_keys_tokens_reach_the_tpm(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens per minute are counted as rows are written. Without a lease the first request after they reach the
    limit gets 429; a lease's requests were admitted for its whole life whatever the tokens (here 30 requests of
    1,000 tokens against 10,000 a minute)."""
    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 60.0)
    one_rate_minute(monkeypatch)
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    await store.set_rate_limit(level="key", target="dev", rpm=None, tpm=10_000)
    limited = lambda: frozenset({who.key.id})  # noqa: E731
    ledger = GatewayLedger(store, "gw-1", rate_limited=limited)
    ledger.start()
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger, rate_limited=limited)
    owner = Owner(who.key.id, who.team.id, who.team.customer_id)
    admitted, leased = 0, 0
    for index in range(30):
        try:
            hold = await admission.admit(key_meta(who, f"r{index}"), reserve_nanos=10_000, model=MODEL)
        except RateLimitedError as refused:
            assert "tokens" in refused.message
            break
        admitted += 1
        leased += hold.lease is not None
        record = finished_record(f"r{index}", 1_000, input_tokens=900, output_tokens=100)
        admission.settle(hold, 1_000)
        ledger.enqueue(owner, record)
        assert await ledger.flush()  # its tokens counted before the next request
        if index == 1:
            await _until_rated(admission)
    assert leased and admitted == 10
    await admission.close()
    await ledger.close()


async def test_leased_requests_whose_rows_are_dropped_past_the_queue_bound_are_charged_alone(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger holds `MAX_QUEUED` rows (the database away): older rows are dropped, their requests' settles
    written on their own. Every request admitted from the lease is charged once, and the lease's row goes."""
    from ccgate.gateway import ledger as gateway_ledger

    monkeypatch.setattr(gateway_ledger, "MAX_QUEUED", 2)
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    ledger = GatewayLedger(store, "gw-1")  # its writer not started yet: rows stay queued
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger, rate_limited=frozenset)
    owner = Owner(who.key.id, who.team.id, who.team.customer_id)
    costs = [1_000, 2_000, 3_000, 4_000, 5_000]
    for index, nanos in enumerate(costs):
        hold = await admission.admit(key_meta(who, f"r{index}"), reserve_nanos=50_000, model=MODEL)
        assert (hold.lease is not None) == (index > 0)
        record = finished_record(f"r{index}", nanos)
        admission.settle(hold, nanos)
        ledger.enqueue(owner, record)
    assert ledger.dropped == 3
    ledger.start()
    await _settled(store, who, [(sum(costs), 0)])
    charged = await store.db.fetch("SELECT charged_nanos FROM requests ORDER BY charged_nanos")
    # the dropped rows' charges are kept on placeholder rows (`claim_charge`), the others on their rows
    assert sorted(int(row[0]) for row in charged) == costs
    await admission.close()
    await ledger.close()


async def test_deleting_a_provider_with_a_budget_ends_this_instances_leases_at_once(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a provider config deletes its budgets: a change to budgets like any other, so this instance's leases
    end then (the lease's row kept the team's room for the lease's life)."""
    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 60.0)
    who = await acme_dev(store)
    provider = await store.put_provider("anthropic", kind="anthropic")
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    await store.create_budget(level="provider", target="anthropic", limit_nanos=10**12, period="1d")
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=frozenset, provider_ids=lambda name: provider.id)
    holds = [
        await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL, provider="anthropic") for _ in range(2)
    ]
    assert holds[1].lease is not None
    await store.delete_provider("anthropic")
    for hold in holds:
        admission.settle(hold, 1_000)
    await _settled(store, who, [(2_000, 0)])
    await admission.close()
