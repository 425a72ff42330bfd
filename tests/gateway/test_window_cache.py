"""`current_window` keeps each budget's answer while it holds: cached or not, the answer is the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.core.budgets import bucket_size, parse_period, rolling_buckets, window
from ccgate.storage.gateway.admission import current_window
from ccgate.storage.gateway.records import Budget, BudgetLevel

PERIODS = ["1min", "5min", "1h", "6h", "1d", "2d", "1w", "1mo", "3mo", "1y"]
ZONES = ["UTC", "Europe/London", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
START = datetime(2026, 3, 7, tzinfo=UTC)  # a few days before New York's and weeks before London's DST change


def _fresh(budget: Budget, now: datetime) -> tuple[datetime, datetime, datetime]:
    """The answer worked out from scratch (what current_window did before it kept answers)."""
    if budget.calendar:
        start, end = window(budget.period, now, ZoneInfo(budget.timezone), calendar=True)
        return start, end, start
    size = bucket_size(budget.period)
    buckets = rolling_buckets(budget.period, now, size=size)
    return buckets[0], buckets[0] + size + budget.period.approx_duration(), buckets[-1]


@settings(deadline=None, max_examples=300)
@given(
    period=st.sampled_from(PERIODS),
    calendar=st.booleans(),
    zone=st.sampled_from(ZONES),
    offsets=st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=90 * 24 * 3600),
            st.integers(min_value=0, max_value=90 * 24 * 60).map(lambda minutes: 60 * minutes),  # on boundaries
        ),
        min_size=1,
        max_size=30,
    ),
    name=st.integers(min_value=0, max_value=10**6),
)
def test_a_kept_window_equals_one_worked_out_afresh(
    period: str, calendar: bool, zone: str, offsets: list[int], name: int
) -> None:
    budget = Budget(
        id=f"b{name}-{period}-{calendar}-{zone}",
        level=BudgetLevel.TEAM,
        target_id="t",
        limit_nanos=1,
        period=parse_period(period),
        calendar=calendar,
        timezone=zone,
        thresholds=(),
        webhook_url=None,
        override_limit_nanos=None,
        override_until=None,
        created_at=START,
        updated_at=START,
    )
    # times in any order, and each also a microsecond before and after, where a window or bucket may turn
    for offset in sorted(offsets) + offsets:
        for nudge in (-1, 0, 1):
            now = START + timedelta(seconds=offset, microseconds=nudge)
            assert current_window(budget, now) == _fresh(budget, now), now
