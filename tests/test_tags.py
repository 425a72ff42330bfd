"""Launch tags: validated at `launch`, carried by the sidecar onto every row of that launch only, reported by
`cost --by tag:KEY` and filtered by `logs --tag`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from cli_runner import run_main
from sidecar_harness import running_sidecar

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.core.tags import decode, encode, parse_tags
from ccgate.errors import UserInputError
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import insert_records, open_ledger
from test_launching import FakeSidecar
from test_launching import fake_sidecar as fake_sidecar  # the fixture, used by name
from test_sidecar_proxy import BODY, CLIENT_HEADERS


def test_tags_from_the_environment_and_flags_merge_with_flags_winning() -> None:
    tags = parse_tags(["ticket=ABC-2", "team=payments"], env_value="ticket=ABC-1, env=ci")
    assert tags == {"ticket": "ABC-2", "env": "ci", "team": "payments"}
    assert encode(tags) == '{"env":"ci","team":"payments","ticket":"ABC-2"}'
    assert decode(encode(tags)) == tags and encode({}) is None and decode("[1]") == {}


@pytest.mark.parametrize(
    "text",
    [
        "ticket",
        "=x",
        "Ticket=x",
        "1st=x",
        "ticket=",
        "ticket=a b",
        "ticket=a,b",
        "ticket=a\nb",
        "t=\x1b[2J",
        "ticket=" + "x" * 129,
        "k" * 33 + "=v",
        "ticket=\u202eevil",
        "ticket='x'",
        "ticket=-rf",
    ],
)
def test_malformed_tags_are_refused_with_a_hint(text: str) -> None:
    with pytest.raises(UserInputError) as refused:
        parse_tags([text])
    assert refused.value.hint and "key=value" in refused.value.hint


def test_too_many_tags_are_refused() -> None:
    with pytest.raises(UserInputError, match="at most 16"):
        parse_tags([f"k{n}=v" for n in range(17)])


def test_launch_registers_its_tags_and_a_later_launch_without_tags_has_none(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_sidecar: FakeSidecar,
) -> None:
    monkeypatch.setenv("CCGATE_TAGS", "env=ci")
    code, _, err = run_main(capsys, monkeypatch, "launch", "--tag", "ticket=ABC-123", "--tag", "team=payments", "true")
    assert code == 0, err
    assert fake_sidecar.registrations[0]["tags"] == {"env": "ci", "ticket": "ABC-123", "team": "payments"}
    monkeypatch.delenv("CCGATE_TAGS")
    code, _, err = run_main(capsys, monkeypatch, "launch", "true")
    assert code == 0, err
    assert "tags" not in fake_sidecar.registrations[1]
    assert fake_sidecar.registrations[0]["launch_id"] != fake_sidecar.registrations[1]["launch_id"]


def test_a_tag_after_the_command_is_the_commands_own(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_sidecar: FakeSidecar,
) -> None:
    code, _, err = run_main(capsys, monkeypatch, "launch", "echo", "--tag", "x y")
    assert code == 0, err
    assert "tags" not in fake_sidecar.registrations[0]


def test_launch_refuses_a_malformed_tag_before_running_anything(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_sidecar: FakeSidecar,
    tmp_path: Any,
) -> None:
    marker = tmp_path / "ran"
    code, _, err = run_main(capsys, monkeypatch, "launch", "--tag", "ticket=a b", "touch", str(marker))
    assert code == 1 and "ccgate: error: tag ticket='a b'" in err and "hint:" in err
    assert not marker.exists() and fake_sidecar.registrations == []
    monkeypatch.setenv("CCGATE_TAGS", "ticket")
    code, _, err = run_main(capsys, monkeypatch, "launch", "touch", str(marker))
    assert code == 1 and "is not key=value" in err and not marker.exists()


async def _post(session: aiohttp.ClientSession, url: str, headers: dict[str, str], payload: Any) -> int:
    async with session.post(f"{url}/_ccgate/launches", json=payload, headers=headers) as resp:
        return resp.status


async def test_the_sidecar_tags_every_row_of_a_tagged_launch_and_no_other() -> None:
    async with running_sidecar() as harness, aiohttp.ClientSession() as session:
        tagged = {"launch_id": "launch-tagged-1", "project": "/p", "tags": {"ticket": "ABC-1", "team": "pay"}}
        assert await _post(session, harness.url, harness.headers, tagged) == 200
        assert await _post(session, harness.url, harness.headers, {"launch_id": "launch-plain-2"}) == 200
        for bad in ({"Ticket": "x"}, {"ticket": "a b"}, {"ticket": 3}, ["ticket=x"]):
            status = await _post(session, harness.url, harness.headers, {"launch_id": "launch-bad-03", "tags": bad})
            assert status == 400, bad
        for launch in ("launch-tagged-1", "launch-plain-2", "launch-tagged-1"):
            headers = {**CLIENT_HEADERS, **harness.launch_headers(launch)}
            async with session.post(f"{harness.url}/v1/messages", json=BODY, headers=headers) as resp:
                await resp.read()
        rows = harness.rows()
        by_launch = {(row["launch_id"], row["tags"]) for row in rows}
        assert by_launch == {("launch-tagged-1", '{"team":"pay","ticket":"ABC-1"}'), ("launch-plain-2", None)}
        assert "launch-bad-03" not in harness.app[__import__("ccgate.sidecar.app").sidecar.app.STATE].launches


async def test_tags_survive_a_sidecar_restart() -> None:
    async with running_sidecar() as harness, aiohttp.ClientSession() as session:
        payload = {"launch_id": "launch-kept-01", "tags": {"ticket": "ABC-9"}}
        assert await _post(session, harness.url, harness.headers, payload) == 200
        paths = harness.paths
    from ccgate.sidecar.app import _load_launches

    assert _load_launches(paths)["launch-kept-01"].tags == '{"ticket":"ABC-9"}'
    # a hand-edited file: tags of the wrong type read as none, invalid ones drop the entry, nothing crashes
    launches = paths.state_dir / "launches.json"
    launches.write_text(
        json.dumps({"launch-odd-0001": {"tags": {"a": "b"}}, "launch-bad-0002": {"tags": '{"Bad Key":"x"}'}})
    )
    loaded = _load_launches(paths)
    assert loaded["launch-odd-0001"].tags is None and "launch-bad-0002" not in loaded


def _seed(*records: RequestRecord) -> None:
    db = open_ledger(resolve_paths().ensure().ledger_file)
    insert_records(db, records)
    db.close()


def _row(hour: int, nanos: int | None, tags: dict[str, str] | None, **fields: Any) -> RequestRecord:
    cost = (
        Cost(nanos=None, quality=PriceQuality.UNPRICED)
        if nanos is None
        else Cost(nanos=nanos, quality=PriceQuality.PRICED)
    )
    record = RequestRecord(
        started_at=datetime(2025, 3, 4, hour, 30, tzinfo=UTC),
        requested_model="claude-sonnet-4-5",
        status=RequestStatus.OK,
        usage=Usage(input_tokens=10, output_tokens=5),
        cost=cost,
        tags=encode(tags or {}),
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def test_cost_by_tag_groups_tagged_rows_and_puts_the_rest_under_none(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(
        _row(1, 1_000, {"ticket": "ABC-1", "team": "pay"}),
        _row(2, 2_000, {"ticket": "ABC-1"}),
        _row(3, 4_000, {"ticket": "ABC-2"}),
        _row(4, 8_000, {"team": "pay"}),  # tagged, but not with this key
        _row(5, 16_000, None),
        _row(6, None, {"ticket": "ABC-2"}),
        _row(7, 32_000, {"ticket": "ABC-3"}, status=RequestStatus.PENDING),  # in flight: counted
    )
    args = ("cost", "--since", "2025-03-04", "--until", "2025-03-04", "--json")
    code, out, err = run_main(capsys, monkeypatch, *args, "--by", "tag:ticket")
    assert code == 0, err
    data = json.loads(out)
    groups = {
        group["key"]: (group["requests"], group["cost_usd"], group["unpriced_requests"]) for group in data["groups"]
    }
    assert data["by"] == "tag:ticket"
    assert groups == {
        "ABC-3": (1, "0.000032000", 0),
        "(none)": (2, "0.000024000", 0),
        "ABC-2": (2, "0.000004000", 1),
        "ABC-1": (2, "0.000003000", 0),
    }
    assert [group["key"] for group in data["groups"]] == ["ABC-3", "(none)", "ABC-2", "ABC-1"]
    assert data["total"]["cost_usd"] == "0.000063000" and data["total"]["requests"] == 7
    code, out, _ = run_main(
        capsys, monkeypatch, "cost", "--since", "2025-03-04", "--until", "2025-03-04", "--by", "tag:ticket"
    )
    assert code == 0 and "Tag ticket" in out and "ABC-1" in out
    code, _, err = run_main(capsys, monkeypatch, *args, "--by", "tag:Bad Key")
    assert code == 1 and "not a valid tag key" in err


def test_logs_tag_lists_only_that_tags_rows(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(_row(1, 1_000, {"ticket": "ABC-1"}), _row(2, 2_000, {"ticket": "ABC-2"}), _row(3, 3_000, None))
    code, out, err = run_main(capsys, monkeypatch, "logs", "--tag", "ticket=ABC-1", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["tags"] for row in rows] == [{"ticket": "ABC-1"}]
    code, out, _ = run_main(capsys, monkeypatch, "logs", "--json")
    assert [json.loads(line)["tags"] for line in out.splitlines()] == [{"ticket": "ABC-1"}, {"ticket": "ABC-2"}, {}]
    code, _, err = run_main(capsys, monkeypatch, "logs", "--tag", "ticket")
    assert code == 1 and "is not key=value" in err
