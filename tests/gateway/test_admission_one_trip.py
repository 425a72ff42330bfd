"""Admission and settle in one round trip (a job on the SQLite thread, a PL/pgSQL function on PostgreSQL):
exact under concurrency, the same arithmetic as `ccgate.core.budgets.decide`, never fooled by cached budget
definitions, and rate limits counted in the same trip."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import timedelta

import pytest
from gateway_testing import StoreFactory, acme_dev, admit_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccgate.core.budgets import Admit, BudgetState, Reject, decide
from ccgate.core.records import new_request_id, to_iso, utcnow
from ccgate.storage.gateway import Admitted, GatewayStore, Refused, Waiting
from ccgate.storage.gateway.admission import Ask, ReserveBatcher, current_window
from ccgate.storage.gateway.db import PostgresDatabase, Row, for_backend, split_script
from ccgate.storage.gateway.records import KeyIdentity, RateAllowed, RateLimited

TTL = timedelta(minutes=5)


async def test_fifty_concurrent_admissions_with_rate_limits_overshoot_by_at_most_one(open_store: StoreFactory) -> None:
    """Two instances, budgets at customer, team and key level and a team rate limit: rate limit and first
    reservation in one trip, retries reserve only. Spend stays within one request of the tightest limit, every
    request is counted once by the rate limit, and nothing stays reserved."""
    first = await open_store()
    second = await open_store(migrate_now=False)
    who = await acme_dev(first)
    cost = bound = 4_000
    limit = 13_000  # the team's room for about three requests; the others are wider
    await first.create_budget(level="customer", target="acme", limit_nanos=10 * limit, period="1mo")
    await first.create_budget(level="team", target="core", limit_nanos=limit, period="1d")
    await first.create_budget(level="key", target="dev", limit_nanos=5 * limit, period="1d", calendar=False)
    await first.set_rate_limit(level="team", target="core", rpm=1_000, tpm=None)
    admitted: list[str] = []
    refused: list[Refused] = []

    async def one(store: GatewayStore, index: int) -> None:
        rate, result = await admit_key(store, who, bound, instance=f"instance-{id(store)}")
        assert isinstance(rate, RateAllowed)
        for _ in range(2_000):
            if isinstance(result, Admitted):
                admitted.append(result.reservation.id)
                await asyncio.sleep(random.random() / 100)
                assert await store.settle(result.reservation, cost)
                return
            if isinstance(result, Refused):
                refused.append(result)
                return
            await asyncio.sleep(0.005)
            _, result = await admit_key(store, who, bound, take_rate=False, instance=f"instance-{id(store)}")
        raise AssertionError(f"request {index} waited for ever")

    await asyncio.gather(*(one(first if i % 2 else second, i) for i in range(50)))
    assert who.customer is not None
    views = await first.budget_views(key_id=who.key.id, team_id=who.team.id, customer_id=who.customer.id)
    assert [v.budget.level.value for v in views] == ["customer", "team", "key"]
    for view in views:  # every level got exactly the admitted requests' cost, nothing is held
        assert view.state.spent_nanos == cost * len(admitted)
        assert view.state.reserved_nanos == 0
    assert cost * len(admitted) <= limit + cost
    assert len(admitted) >= 3
    assert len(admitted) + len(refused) == 50
    assert all(r.blocking.budget.level.value == "team" and r.blocking.state.spent_nanos >= limit for r in refused)
    assert await first.db.fetch("SELECT id FROM reservations") == []
    # each request counted once against the team's rate limit, whichever instance and however often it retried
    assert await first.db.fetch("SELECT sum(requests) FROM rate_counters") in ([(50,)], [(50.0,)])


async def test_a_rate_limited_request_holds_nothing_and_is_not_counted(store: GatewayStore) -> None:
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**9, period="1d")
    await store.set_rate_limit(level="key", target="dev", rpm=2, tpm=None)
    for _ in range(2):
        rate, result = await admit_key(store, who, 1_000)
        assert isinstance(rate, RateAllowed) and isinstance(result, Admitted)
        await store.settle(result.reservation, 1_000)
    rate, result = await admit_key(store, who, 1_000)
    assert isinstance(rate, RateLimited) and result is None
    assert (rate.kind, rate.used, rate.allowed, rate.limit.level.value) == ("requests", 2, 2, "key")
    assert await store.db.fetch("SELECT id FROM reservations") == []
    assert await store.db.fetch("SELECT requests FROM rate_counters") == [(2,)]
    # without take_rate the limit is not looked at (a waiting request's later attempts)
    _, again = await admit_key(store, who, 1_000, take_rate=False)
    assert isinstance(again, Admitted)


async def test_budgets_changed_through_another_instance_apply_at_the_next_admission(
    open_store: StoreFactory,
) -> None:
    """This instance's copy of the budget definitions is checked on every admission: a budget created, lowered
    or deleted elsewhere applies to the very next request here, with no refresh interval."""
    here = await open_store()
    there = await open_store(migrate_now=False)
    who = await acme_dev(here)
    team = await here.create_budget(level="team", target="core", limit_nanos=10_000, period="1d")
    _, result = await admit_key(here, who, 1_000)  # reads and keeps the definitions
    assert isinstance(result, Admitted)
    await here.settle(result.reservation, 1_000)

    key_budget = await there.create_budget(level="key", target="dev", limit_nanos=1_500, period="1d")
    _, result = await admit_key(here, who, 1_000)
    assert isinstance(result, Admitted)
    assert {v.budget.id for v in result.budgets} == {team.id, key_budget.id}
    await here.settle(result.reservation, 1_000)
    assert (await here.budget_views(key_id=who.key.id, team_id=who.team.id, customer_id=None))[1].state.spent_nanos

    await there.update_budget(team.id, limit_nanos=2_000)  # spent 2,000 of it now
    _, refused = await admit_key(here, who, 1_000)
    assert isinstance(refused, Refused) and refused.blocking.budget.id == team.id
    assert refused.blocking.state.limit_nanos == 2_000

    await there.delete_budget(team.id)
    await there.delete_budget(key_budget.id)
    _, result = await admit_key(here, who, 1_000)
    assert isinstance(result, Admitted) and result.budgets == ()
    assert await here.db.fetch("SELECT id FROM reservations") == []


async def test_settle_charges_the_bucket_of_each_budget_that_still_exists(open_store: StoreFactory) -> None:
    here = await open_store()
    there = await open_store(migrate_now=False)
    who = await acme_dev(here)
    team = await here.create_budget(level="team", target="core", limit_nanos=10_000, period="1d")
    rolling = await here.create_budget(level="key", target="dev", limit_nanos=10_000, period="1h", calendar=False)
    _, result = await admit_key(here, who, 1_000)
    assert isinstance(result, Admitted)
    await there.delete_budget(team.id)
    assert await here.settle(result.reservation, 700)
    now = utcnow()
    rows = await here.db.fetch("SELECT budget_id, bucket_start, spent_nanos FROM budget_spend")
    assert rows == [(rolling.id, to_iso(current_window(rolling, now)[2]), 700)]
    assert not await here.settle(result.reservation, 0)  # gone already: False, nothing added


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    levels=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10_000),  # limit
            st.integers(min_value=0, max_value=12_000),  # spent
            st.integers(min_value=0, max_value=6_000),  # reserved
        ),
        min_size=1,
        max_size=3,
    ),
    bound=st.integers(min_value=0, max_value=8_000),
)
async def test_the_database_decides_as_core_budgets_decide(
    store: GatewayStore, levels: list[tuple[int, int, int]], bound: int
) -> None:
    """Whatever spent, reserved and limit each level has, the database's answer is `decide`'s."""
    await store.db.execute("DELETE FROM reservation_budgets")
    await store.db.execute("DELETE FROM reservations")
    await store.db.execute("DELETE FROM budget_spend")
    await store.db.execute("DELETE FROM budgets")
    if not await store.list_customers():
        await acme_dev(store)
    who = await store.authenticate_key_hash(
        str((await store.db.fetchone("SELECT key_hash FROM virtual_keys"))[0])  # type: ignore[index]
    )
    assert who is not None
    now = utcnow()
    states = []
    for (limit, spent, reserved), (level, target) in zip(
        levels, [("customer", "acme"), ("team", "core"), ("key", "dev")], strict=False
    ):
        budget = await store.create_budget(level=level, target=target, limit_nanos=limit, period="1d")
        if spent:
            await store.db.execute(
                "INSERT INTO budget_spend (budget_id, bucket_start, spent_nanos) VALUES (?, ?, ?)",
                (budget.id, to_iso(current_window(budget, now)[2]), spent),
            )
        if reserved:
            hold = new_request_id()
            await store.db.execute(
                "INSERT INTO reservations (id, amount_nanos, instance_id, created_at, expires_at) "
                "VALUES (?, ?, 'other', ?, ?)",
                (hold, reserved, to_iso(now), to_iso(now + TTL)),
            )
            await store.db.execute(
                "INSERT INTO reservation_budgets (budget_id, reservation_id) VALUES (?, ?)", (budget.id, hold)
            )
        states.append(BudgetState(f"{budget.level.rank}:{budget.id}", "b", limit, spent, reserved, now))
    expected = decide(states, bound)
    _, result = await admit_key(store, who, bound)
    if isinstance(expected, Admit):
        assert isinstance(result, Admitted)
        assert [v.state.spent_nanos for v in result.budgets] == [s.spent_nanos for s in states]
    else:
        assert isinstance(result, Refused if isinstance(expected, Reject) else Waiting)
        assert result.blocking.state.key == expected.blocking.key


def test_a_dollar_quoted_function_is_one_statement_and_runs_only_where_marked() -> None:
    script = (
        "-- header\nCREATE TABLE t (a TEXT);\n\n"
        "-- ccgate: postgresql only\n-- what it does\nCREATE FUNCTION f() RETURNS INTEGER LANGUAGE plpgsql AS $$\n"
        "BEGIN\n    PERFORM 1;\n    RETURN 1;\nEND\n$$;\n\n"
        "-- ccgate: sqlite only\nCREATE INDEX t_a ON t (a);\n"
    )
    statements = split_script(script)
    assert len(statements) == 3
    assert "RETURN 1;" in statements[1] and statements[1].rstrip().endswith("$$;")
    assert for_backend(statements, "sqlite") == [statements[0], statements[2]]
    assert for_backend(statements, "postgresql") == [statements[0], statements[1]]


def test_ask_lists_the_levels_in_the_applying_order() -> None:
    ask = Ask("k", "t", "c", "p", 1, "i", TTL, utcnow())
    assert ask.applying == ("c", "t", "k", "p")


async def test_a_pooled_postgresql_connection_goes_back_without_a_reset_round_trip(db_url: str) -> None:
    """asyncpg's default reset query on every release would double the round trips of a one-statement call."""
    if not db_url.startswith("postgresql"):
        return
    import asyncpg

    store = await GatewayStore.open(db_url)
    watcher = await asyncpg.connect(db_url)
    try:
        assert await store.db.fetch("SELECT 4242") == [(4242,)]
        queries = [
            str(row["query"])
            for row in await watcher.fetch(
                "SELECT query FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ]
        assert "SELECT 4242" in queries, queries
        assert not any("RESET ALL" in query for query in queries), queries
    finally:
        await watcher.close()
        await store.close()


async def test_requests_and_tokens_are_counted_exactly_while_admissions_and_token_counts_interleave(
    open_store: StoreFactory,
) -> None:
    """Admissions (which count requests) and finished requests' token counts hit the same counter rows from two
    instances at once: every request and every token is counted, and neither waits on the other in a cycle."""
    first = await open_store()
    second = await open_store(migrate_now=False)
    who = await acme_dev(first)
    await first.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    await first.set_rate_limit(level="key", target="dev", rpm=10_000, tpm=10**9)
    await first.set_rate_limit(level="team", target="core", rpm=10_000, tpm=10**9)

    async def request(store: GatewayStore) -> None:
        rate, result = await admit_key(store, who, 10)
        assert isinstance(rate, RateAllowed) and isinstance(result, Admitted)
        await store.settle(result.reservation, 10)

    async def tokens(store: GatewayStore) -> None:
        await store.add_tokens(key_id=who.key.id, team_id=who.team.id, tokens=100)

    work = [request(first if i % 2 else second) for i in range(30)]
    work += [tokens(second if i % 2 else first) for i in range(30)]
    random.shuffle(work)
    await asyncio.gather(*work)
    counted = await first.db.fetch("SELECT requests, tokens FROM rate_counters ORDER BY rate_limit_id")
    # both limits' counters, unless the minute turned during the test (then split over two rows each)
    assert sum(int(r[0]) for r in counted) == 60 and sum(int(r[1]) for r in counted) == 6_000


async def test_a_settle_does_not_wait_for_an_admission_holding_the_budget_rows(store: GatewayStore) -> None:
    """PostgreSQL: admissions lock their budget rows among themselves; a settle takes none (`ccgate_settle_v2`),
    so a team's settles do not queue behind its admissions. Exact all the same: the admission, once it goes on,
    counts the settled request by its spend, not its reservation. (The first settle in a window inserts the
    window's spend row, whose foreign key check does wait for a budget row: once per budget and window.)"""
    if store.db.backend != "postgresql":
        return  # SQLite has one write lock for everything
    import asyncpg

    who = await acme_dev(store)
    assert who.customer is not None
    await store.create_budget(level="team", target="core", limit_nanos=100_000, period="1d")
    _, earlier = await admit_key(store, who, 10_000)
    _, first = await admit_key(store, who, 10_000)
    assert isinstance(earlier, Admitted) and isinstance(first, Admitted)
    await store.settle(earlier.reservation, 5_000)  # the window's spend row exists from here on
    assert isinstance(store.db, PostgresDatabase)
    admission = await asyncpg.connect(store.db._dsn)
    try:
        holding = admission.transaction()
        await holding.start()
        await admission.execute("SELECT 1 FROM budgets WHERE level = 'team' FOR UPDATE")  # an admission, mid-way
        assert await asyncio.wait_for(store.settle(first.reservation, 55_000), 30)
        await holding.rollback()
    finally:
        await admission.close()
    (view,) = await store.budget_views(key_id=who.key.id, team_id=who.team.id, customer_id=who.customer.id)
    assert (view.state.spent_nanos, view.state.reserved_nanos) == (60_000, 0)
    _, second = await admit_key(store, who, 30_000)
    assert isinstance(second, Admitted)
    _, third = await admit_key(store, who, 30_000)  # 60,000 spent + 30,000 held + 30,000 > 100,000
    assert isinstance(third, Waiting)


async def test_the_admission_function_plans_its_budget_query_once_per_connection(store: GatewayStore) -> None:
    """PostgreSQL: with its arrays as parameters, every call of ``ccgate_reserve_v1`` got a fresh custom plan
    (0.3 ms of planning inside the section that holds the team's budget rows); migration 0010 pins the generic
    plan (for the previous release, which still calls v1), ``ccgate_reserve_many_v1`` has it from the start, and
    admissions decide the same with it."""
    if store.db.backend != "postgresql":
        return
    for function in ("ccgate_reserve_v1", "ccgate_reserve_many_v1"):
        (config,) = await store.db.fetch("SELECT proconfig FROM pg_proc WHERE proname = ?", (function,))
        assert "plan_cache_mode=force_generic_plan" in (config[0] or []), (function, config)
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=25_000, period="1d")
    results = [(await admit_key(store, who, 10_000))[1] for _ in range(8)]  # past the plan cache's five custom plans
    assert [type(result) for result in results] == [Admitted] * 2 + [Waiting] * 6  # 20,000 held of 25,000


async def test_admissions_queued_behind_a_call_go_together_and_each_gets_its_own_answer(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: admissions that arrive while a call is in flight go in one call of ``ccgate_reserve_many_v1``
    (two instances, two teams in different orders, so their batches lock rows of both teams at once). Each
    gets what it would alone: the budgets exact per team, the rate limit per key, and an admission decided on
    budget definitions that changed meanwhile answered 'stale' alone and retried."""
    here = await open_store()
    if here.db.backend != "postgresql":
        return
    there = await open_store(migrate_now=False)
    monkeypatch.setattr(ReserveBatcher, "MAX_IN_FLIGHT", 1)
    dev = await acme_dev(here)
    await here.create_team("edge", customer="acme")
    ops = await here.authenticate_key((await here.create_key(team="edge", name="ops")).plaintext)
    assert ops is not None
    await here.create_budget(level="team", target="core", limit_nanos=30_000, period="1d")  # room for 3
    edge = await here.create_budget(level="team", target="edge", limit_nanos=90_000, period="1d")  # for 9
    await here.set_rate_limit(level="key", target="ops", rpm=7, tpm=None)
    calls: list[int] = []
    fetch = PostgresDatabase.fetch

    async def counting(self: PostgresDatabase, sql: str, params: Sequence[object] = ()) -> list[Row]:
        if "ccgate_reserve_many_v1" in sql:
            calls.append(len(params[2]))  # type: ignore[arg-type]
        return await fetch(self, sql, params)

    monkeypatch.setattr(PostgresDatabase, "fetch", counting)
    await admit_key(here, ops, 10_000)  # reads and keeps the definitions of edge here
    await there.update_budget(edge.id, limit_nanos=80_000)  # ...which are stale from now on
    outcomes: dict[str, list[object]] = {"dev": [], "ops": []}

    async def one(store: GatewayStore, who: KeyIdentity, name: str) -> None:
        rate, result = await admit_key(store, who, 10_000, instance=f"i-{id(store)}")
        outcomes[name].append(result if isinstance(rate, RateAllowed) else rate)

    jobs = [one(here, dev, "dev") for _ in range(10)] + [one(here, ops, "ops") for _ in range(10)]
    jobs += [one(there, ops, "ops") for _ in range(5)] + [one(there, dev, "dev") for _ in range(5)]
    random.Random(7).shuffle(jobs)
    await asyncio.gather(*jobs)
    assert max(calls) > 1, calls  # some went together
    assert sum(isinstance(r, Admitted) for r in outcomes["dev"]) == 3
    ops_admitted = sum(isinstance(r, Admitted) for r in outcomes["ops"])
    ops_limited = sum(isinstance(r, RateLimited) for r in outcomes["ops"])
    assert ops_limited == 15 - 6  # 7 a minute, one taken before
    assert ops_admitted == 6  # room for 7 of the lowered 80,000 after the first 10,000: all 6 allowed fit
    (edge_view,) = [v for v in await here.budget_views(key_id=ops.key.id, team_id=ops.team.id, customer_id=None)]
    assert (edge_view.state.limit_nanos, edge_view.state.reserved_nanos) == (80_000, 70_000)
