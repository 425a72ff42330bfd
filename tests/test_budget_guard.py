"""The asyncio budget guard: exact admission under concurrency, waiting, expiry, window roll-over, reloads."""

from __future__ import annotations

import asyncio
import random
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from ccgate.core.budgets import parse_period
from ccgate.core.records import usd_to_nanos
from ccgate.core.settings import BudgetSettings, Config
from ccgate.errors import BudgetExceededError, ConfigError, UnpricedModelError
from ccgate.sidecar.admission import (
    AdmissionRequest,
    BudgetGuard,
    BudgetRule,
    Reservation,
    resolve_timezone,
    rules_from_config,
)
from ccgate.wire.envelope import error_headers

BERLIN = ZoneInfo("Europe/Berlin")


def usd(text: str) -> int:
    return usd_to_nanos(Decimal(text))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Ledger:
    """A stand-in for the ledger query: fixed spend per project, and a record of every call."""

    def __init__(self, spent: dict[str | None, int] | None = None) -> None:
        self.spent = spent or {}
        self.calls: list[tuple[datetime, datetime, str | None]] = []
        self.threads: set[int] = set()

    def __call__(self, since: datetime, until: datetime, project: str | None) -> int:
        self.calls.append((since, until, project))
        self.threads.add(threading.get_ident())
        return self.spent.get(project, 0)


def rule(limit: str, period: str = "1d", project: str | None = None) -> BudgetRule:
    parsed = parse_period(period)
    return BudgetRule(
        key=f"{parsed.text}@{project or '*'}",
        period=parsed,
        limit_nanos=usd(limit),
        project=project,
        warn_at=Decimal("0.8"),
        label=f"{parsed.name} budget" + (f" for project {project}" if project else ""),
    )


def make_guard(
    rules: list[BudgetRule], ledger: Ledger, clock: Clock | None = None, **kwargs: float
) -> tuple[BudgetGuard, Clock]:
    clock = clock or Clock(datetime(2026, 11, 26, 11, 0, tzinfo=UTC))
    return BudgetGuard(rules, spent_loader=ledger, clock=clock, tz=BERLIN, **kwargs), clock


async def run_request(guard: BudgetGuard, reserve: int, cost: int, *, delay: float, project: str | None = None) -> int:
    reservation = await guard.admit(AdmissionRequest(project=project, reserve_nanos=reserve, model="claude-x"))
    await asyncio.sleep(delay)
    guard.settle(reservation, cost)
    return cost


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_fifty_concurrent_requests_overshoot_by_at_most_one(seed: int) -> None:
    rng = random.Random(seed)
    limit, already_spent, reserve = usd("1.00"), usd("0.10"), usd("0.30")
    guard, _ = make_guard([rule("1.00")], Ledger({None: already_spent}))
    costs = [rng.randint(usd("0.15"), reserve) for _ in range(50)]
    results = await asyncio.gather(
        *(run_request(guard, reserve, cost, delay=rng.uniform(0, 0.02)) for cost in costs),
        return_exceptions=True,
    )
    settled = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if not isinstance(r, int)]
    assert len(settled) + len(refused) == 50
    assert all(isinstance(r, BudgetExceededError) and "daily budget reached" in r.message for r in refused)
    assert len(settled) >= 3  # room for three reservations; none of them was refused
    total = already_spent + sum(settled)
    assert limit <= total <= limit + max(settled)  # used up, and over by less than one request
    [state] = guard.states()
    assert state.spent_nanos == total
    assert state.reserved_nanos == 0


async def test_nearly_spent_budget_admits_exactly_one_of_fifty() -> None:
    limit = usd("20.00")
    guard, _ = make_guard([rule("20")], Ledger({None: limit - usd("0.01")}))
    results = await asyncio.gather(
        *(run_request(guard, usd("0.50"), usd("0.40"), delay=0.001 * (i % 5)) for i in range(50)),
        return_exceptions=True,
    )
    settled = [r for r in results if isinstance(r, int)]
    assert settled == [usd("0.40")]
    assert sum(isinstance(r, BudgetExceededError) for r in results) == 49
    [state] = guard.states()
    assert state.spent_nanos == limit - usd("0.01") + usd("0.40")


async def test_ten_sub_agents_all_served_while_reservations_exceed_the_budget() -> None:
    guard, _ = make_guard([rule("10")], Ledger({None: usd("0.10")}))
    running = 0
    peak = 0

    async def sub_agent(i: int) -> int:
        nonlocal running, peak
        reservation = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("3.00")))
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005 * (i % 3))
        running -= 1
        guard.settle(reservation, usd("0.40"))
        return i

    served = await asyncio.gather(*(sub_agent(i) for i in range(10)))
    assert sorted(served) == list(range(10))
    assert peak == 3  # 0.10 + 3 x 3.00 fits in 10.00, a fourth reservation does not: it waited its turn
    [state] = guard.states()
    assert state.spent_nanos == usd("4.10")
    assert state.reserved_nanos == 0


async def test_requests_larger_than_the_whole_budget_go_one_at_a_time() -> None:
    guard, _ = make_guard([rule("5")], Ledger())
    running = 0
    peak = 0

    async def big(i: int) -> None:
        nonlocal running, peak
        reservation = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("8.00")))
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.002)
        running -= 1
        guard.settle(reservation, usd("0.25"))

    await asyncio.gather(*(big(i) for i in range(10)))
    assert peak == 1
    assert guard.states()[0].spent_nanos == usd("2.50")


async def test_wait_times_out_with_a_fully_reserved_message() -> None:
    guard, _ = make_guard([rule("1")], Ledger(), wait_timeout=0.05)
    held = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.90")))
    with pytest.raises(BudgetExceededError) as caught:
        await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.20")))
    assert "fully reserved by requests in flight" in caught.value.message
    assert "`ccgate budget set daily 2`" in caught.value.message
    guard.release(held)
    admitted = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.20")))
    assert admitted.budget_keys == ("1d@*",)


async def test_crashed_reservations_expire_after_the_ttl() -> None:
    guard, clock = make_guard([rule("1")], Ledger(), wait_timeout=0.02, reservation_ttl=600)
    crashed = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.80")))
    assert guard.states()[0].reserved_nanos == usd("0.80")
    clock.advance(599)
    assert guard.expire_stale() == 0
    with pytest.raises(BudgetExceededError, match="fully reserved"):
        await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.50")))
    clock.advance(2)
    assert guard.expire_stale() == 1
    assert guard.states()[0].reserved_nanos == 0
    # the expired request turns out to have finished after all: its cost still counts, its reservation only once
    guard.settle(crashed, usd("0.30"))
    [state] = guard.states()
    assert (state.spent_nanos, state.reserved_nanos) == (usd("0.30"), 0)


async def test_reservations_never_expire_by_default_so_long_streams_keep_their_hold() -> None:
    guard, clock = make_guard([rule("1")], Ledger(), wait_timeout=0.02)
    streaming = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.80")))
    clock.advance(6 * 3600)  # a six-hour stream, far beyond any TTL
    assert guard.expire_stale() == 0
    with pytest.raises(BudgetExceededError, match="fully reserved"):
        await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.50")))
    assert guard.states()[0].reserved_nanos == usd("0.80")
    guard.settle(streaming, usd("0.70"))
    [state] = guard.states()
    assert (state.spent_nanos, state.reserved_nanos) == (usd("0.70"), 0)


async def test_admit_itself_expires_stale_reservations() -> None:
    guard, clock = make_guard([rule("1")], Ledger(), wait_timeout=0.02, reservation_ttl=60)
    await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.80")))
    clock.advance(61)
    fresh = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.50")))
    assert guard.states()[0].reserved_nanos == usd("0.50")
    guard.settle(fresh, usd("0.10"))


async def test_unpriced_model_is_refused_only_when_a_budget_applies() -> None:
    ledger = Ledger()
    guard, _ = make_guard([rule("5", project="/work/app")], ledger)
    with pytest.raises(UnpricedModelError) as caught:
        await guard.admit(AdmissionRequest(project="/work/app", reserve_nanos=None, model="mystery-7b"))
    assert "mystery-7b" in caught.value.message
    assert caught.value.hint is not None and "ccgate price set mystery-7b" in caught.value.hint
    assert caught.value.status == 402 and error_headers(caught.value) == {"x-should-retry": "false"}
    # another project has no budget: the unpriced request passes, and nothing was loaded for it
    free = await guard.admit(AdmissionRequest(project="/work/other", reserve_nanos=None, model="mystery-7b"))
    assert free.budget_keys == ()
    guard.settle(free, 0)
    no_rules, _ = make_guard([], ledger)
    passed = await no_rules.admit(AdmissionRequest(project=None, reserve_nanos=None, model="mystery-7b"))
    no_rules.release(passed)
    assert ledger.calls == []


async def test_spent_budget_is_rejected_with_the_402_message() -> None:
    guard, _ = make_guard([rule("20")], Ledger({None: usd("20.01")}))
    with pytest.raises(BudgetExceededError) as caught:
        await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.01")))
    error = caught.value
    assert error.message == (
        "daily budget reached: $20.01 spent of $20.00 (resets 2026-11-27 00:00 CET). "
        "Raise it with `ccgate budget set daily 40`"
    )
    assert error.status == 402 and error_headers(error) == {"x-should-retry": "false"}


async def test_an_overspent_budget_suggests_a_limit_above_what_is_spent() -> None:
    guard, _ = make_guard([rule("0.01")], Ledger({None: usd("0.03")}))
    with pytest.raises(BudgetExceededError) as caught:
        await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.001")))
    assert caught.value.message.endswith("Raise it with `ccgate budget set daily 0.05`")  # not 0.02


async def test_project_and_global_budgets_both_apply() -> None:
    ledger = Ledger({None: usd("1.00"), "/p/app": usd("0.95")})
    guard, _ = make_guard([rule("1", project="/p/app"), rule("10")], ledger)
    first = await guard.admit(AdmissionRequest(project="/p/app", reserve_nanos=usd("0.10")))
    assert first.budget_keys == ("1d@*", "1d@/p/app")  # one fixed order: sorted keys
    guard.settle(first, usd("0.10"))
    with pytest.raises(BudgetExceededError) as caught:
        await guard.admit(AdmissionRequest(project="/p/app", reserve_nanos=usd("0.10")))
    assert caught.value.message.startswith("daily budget for project /p/app reached: $1.05 spent of $1.00")
    assert "`ccgate budget set daily 2 --project /p/app`" in caught.value.message
    other = await guard.admit(AdmissionRequest(project="/p/other", reserve_nanos=usd("0.10")))
    assert other.budget_keys == ("1d@*",)
    assert [s.spent_nanos for s in guard.states("/p/other")] == [usd("1.10")]
    assert sorted((call[2] or "") for call in ledger.calls) == ["", "/p/app"]
    assert threading.get_ident() not in ledger.threads  # the synchronous ledger query ran off the event loop


async def test_spend_is_loaded_once_per_window_and_reloaded_when_it_rolls() -> None:
    ledger = Ledger({None: usd("0.50")})
    # 23:59:30 in Berlin
    guard, clock = make_guard([rule("1")], ledger, Clock(datetime(2026, 11, 26, 22, 59, 30, tzinfo=UTC)))
    reservations = await asyncio.gather(
        *(guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.01"))) for _ in range(20))
    )
    assert len(ledger.calls) == 1
    assert ledger.calls[0][:2] == (datetime(2026, 11, 25, 23, tzinfo=UTC), datetime(2026, 11, 26, 23, tzinfo=UTC))
    for reservation in reservations[:10]:
        guard.settle(reservation, usd("0.01"))
    assert guard.states()[0].spent_nanos == usd("0.60")
    assert guard.states()[0].reserved_nanos == usd("0.10")
    clock.advance(60)  # past midnight: a new day
    assert guard.states() == []  # not loaded for the new window yet
    ledger.spent[None] = usd("0.02")
    [state] = await guard.snapshot()
    assert len(ledger.calls) == 2
    assert (state.spent_nanos, state.reserved_nanos) == (usd("0.02"), 0)
    assert state.resets_at == datetime(2026, 11, 27, 23, tzinfo=UTC)
    for reservation in reservations[10:]:  # yesterday's requests finish: they do not count against today
        guard.settle(reservation, usd("0.01"))
    assert guard.states()[0].spent_nanos == usd("0.02")


async def test_update_rules_keeps_spend_and_wakes_waiters_when_a_limit_rises() -> None:
    ledger = Ledger({None: usd("0.50")})
    guard, _ = make_guard([rule("1")], ledger, wait_timeout=5)
    held = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.40")))
    waiting = asyncio.create_task(guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.40"))))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    guard.update_rules([rule("2")])
    admitted = await waiting
    [state] = guard.states()
    assert (state.limit_nanos, state.spent_nanos, state.reserved_nanos) == (usd("2"), usd("0.50"), usd("0.80"))
    assert len(ledger.calls) == 1
    guard.settle(held, usd("0.10"))
    guard.release(admitted)
    guard.release(admitted)  # twice is harmless
    guard.settle(held, usd("0.10"))  # so is settling twice
    [state] = guard.states()
    assert (state.spent_nanos, state.reserved_nanos) == (usd("0.60"), 0)
    guard.update_rules([rule("2", period="1w")])  # another period under a new key: the old state goes
    assert guard.states() == []
    guard.update_rules([])
    free = await guard.admit(AdmissionRequest(project=None, reserve_nanos=None))
    assert isinstance(free, Reservation) and free.budget_keys == ()


def test_rules_from_config() -> None:
    config = Config(
        budgets=(
            BudgetSettings(period="daily", limit_usd=Decimal("20")),
            BudgetSettings(period="1mo", limit_usd=Decimal("300.5"), project="/home/me/app", warn_at=Decimal("0.9")),
            BudgetSettings(period="1d", limit_usd=Decimal("30")),
        )
    )
    rules = rules_from_config(config)
    assert [(r.key, r.label, r.limit_nanos, r.warn_at) for r in rules] == [
        ("1d@*", "daily budget", usd("20"), Decimal("0.8")),
        ("1mo@/home/me/app", "monthly budget for project app", usd("300.5"), Decimal("0.9")),
        ("1d@*#2", "daily budget", usd("30"), Decimal("0.8")),
    ]
    assert rules[1].raise_command() == "ccgate budget set monthly 601 --project /home/me/app"
    with pytest.raises(ConfigError, match=r"budgets\[0\]\.period"):
        rules_from_config(Config(budgets=(BudgetSettings(period="fortnightly", limit_usd=Decimal(1)),)))


def test_rules_live_in_budgets_for_the_light_status_line() -> None:
    import ccgate.core.budgets

    assert rules_from_config is ccgate.core.budgets.rules_from_config and BudgetRule is ccgate.core.budgets.BudgetRule
    [project_rule] = rules_from_config(
        Config(budgets=(BudgetSettings(period="1h", limit_usd=Decimal(1), project="/home/me/app"),))
    )
    assert project_rule.short_label == "hourly, app"


def test_resolve_timezone() -> None:
    assert resolve_timezone("Europe/Berlin") == BERLIN
    assert resolve_timezone(None, {"TZ": ":America/New_York"}) == ZoneInfo("America/New_York")
    # POSIX TZ strings (no IANA name): a fixed offset as the C library reads it; `XYZ-5` is UTC+5
    posix = resolve_timezone(None, {"TZ": "XYZ-5"})
    assert datetime(2025, 3, 2, tzinfo=posix).utcoffset() == timedelta(hours=5)
    assert datetime(2025, 3, 2, tzinfo=resolve_timezone(None, {"TZ": "<-0330>3:30"})).utcoffset() == timedelta(
        hours=-3, minutes=-30
    )
    local = resolve_timezone(None, {})
    assert datetime(2026, 1, 1, tzinfo=local).utcoffset() is not None
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        resolve_timezone("Mars/Olympus")


async def test_a_waiter_passes_when_its_budget_is_removed() -> None:
    guard, _ = make_guard([rule("1")], Ledger(), wait_timeout=5)
    held = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.90")))
    waiting = asyncio.create_task(guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.90"))))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    guard.update_rules([])
    assert (await waiting).budget_keys == ()
    guard.settle(held, usd("0.50"))  # its budget is gone: nothing to count it against
    assert guard.states() == []


async def test_shrinking_a_reservation_frees_its_excess_and_lets_a_waiter_in() -> None:
    guard, _ = make_guard([rule("1")], Ledger(), wait_timeout=60)
    held = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.90")))
    waiter = asyncio.create_task(guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.30"))))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    guard.shrink(held, usd("2"))  # a bigger bound never grows a reservation
    assert guard.states()[0].reserved_nanos == usd("0.90")
    guard.shrink(held, usd("0.50"))  # message_start: the real input plus the output bound
    admitted = await asyncio.wait_for(waiter, 5)
    assert guard.states()[0].reserved_nanos == usd("0.80")
    guard.settle(held, usd("0.45"))  # settling gives back what is held now, not what was first reserved
    guard.shrink(held, 0)  # after the end: nothing to shrink
    [state] = guard.states()
    assert (state.spent_nanos, state.reserved_nanos) == (usd("0.45"), usd("0.30"))
    guard.release(admitted)
    assert guard.states()[0].reserved_nanos == 0


async def test_a_waiter_outlasts_the_wait_timeout_while_the_requests_in_flight_make_progress() -> None:
    """A 64K-token stream can run for minutes: requests waiting for its reservation must not get a 402 after
    `wait_timeout` seconds while its bytes keep arriving, only once it stops moving."""
    guard, _ = make_guard([rule("1")], Ledger(), wait_timeout=0.3)
    held = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.90")))
    received = 0
    guard.watch(held, lambda: received)
    waiter = asyncio.create_task(guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.30"))))
    for _ in range(150):  # 1.5 s of a stream: five times the wait timeout
        await asyncio.sleep(0.01)
        received += 100
    assert not waiter.done()
    guard.settle(held, usd("0.10"))
    admitted = await asyncio.wait_for(waiter, 5)
    assert admitted.nanos == usd("0.30")

    # a request in flight that stops moving lets the waiter give up after the wait timeout
    stuck = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.50")))
    guard.watch(stuck, lambda: 42)
    with pytest.raises(BudgetExceededError, match=r"none of them made progress for 0\.3 s"):
        await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.30")))


async def test_a_waiter_gives_up_after_max_wait_however_busy_the_requests_in_flight() -> None:
    guard, _ = make_guard([rule("1")], Ledger(), wait_timeout=0.05, max_wait=0.3)
    held = await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.90")))
    counter = iter(range(10**9))
    guard.watch(held, lambda: next(counter))  # moves every time anyone looks
    with pytest.raises(BudgetExceededError, match=r"fully reserved by requests in flight for 0\.3 s"):
        await guard.admit(AdmissionRequest(project=None, reserve_nanos=usd("0.30")))


async def test_the_sidecar_budgets_keep_the_admission_contract() -> None:
    """`ProjectBudgets` is an `Admission[Reservation]` (mypy checks the assignment) and behaves as its docstring
    says: it applies only where a budget covers the project, shrink only lowers, a reservation ends once."""
    from ccgate.proxy.seams import Admission, ClientMeta
    from ccgate.sidecar.app import ProjectBudgets

    guard, _ = make_guard([rule("5", project="/work/app")], Ledger())
    admission: Admission[Reservation] = ProjectBudgets(guard)
    inside, outside = ClientMeta(project="/work/app"), ClientMeta(project="/work/other")
    assert admission.applies(inside) and not admission.applies(outside)
    reservation = await admission.admit(inside, reserve_nanos=usd("1"), model="claude-x")
    admission.watch(reservation, lambda: 0)
    admission.shrink(reservation, usd("3"))  # above the hold: nothing changes
    assert guard.states()[0].reserved_nanos == usd("1")
    admission.shrink(reservation, usd("0.25"))
    assert guard.states()[0].reserved_nanos == usd("0.25")
    admission.settle(reservation, usd("0.10"))
    admission.release(reservation)  # already ended: a second end changes nothing
    assert (guard.states()[0].spent_nanos, guard.states()[0].reserved_nanos) == (usd("0.10"), 0)
    with pytest.raises(UnpricedModelError):
        await admission.admit(inside, reserve_nanos=None, model="mystery-7b")
