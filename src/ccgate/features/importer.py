"""`ccgate import claude-code`: backfill the ledger from Claude Code's JSONL transcripts.

Each assistant line of `~/.claude/projects/**/*.jsonl` carries `message.id`, `message.model`, `message.usage`,
`requestId`, `sessionId`, `cwd` and `timestamp`. A streamed reply is written once per content block, so the
same (message id, request id) appears on several lines: it is one request, and the line with the most output
tokens wins. Requests the sidecar already metered (same upstream message id) are skipped, and imported rows
get deterministic ids, so running the import again adds nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccgate.core.records import RequestRecord, RequestStatus, Usage, from_iso, to_iso
from ccgate.core.usage import anthropic_output_tokens, invalid_anthropic_count, usage_from_anthropic
from ccgate.errors import UserInputError
from ccgate.storage.ledger import storable_text

if TYPE_CHECKING:
    from sqlite_utils import Database

    from ccgate.core.pricing import PriceCatalog

SOURCE = "import"
PROVIDER = "anthropic"
SYNTHETIC_MODEL = "<synthetic>"
# Fixed namespace: the id of an imported request depends only on its message id and request id.
IMPORT_NAMESPACE = uuid.UUID("6b1d4c0e-8f3a-5e2b-9c7d-2a4f6e8b0c13")
_QUERY_CHUNK = 500

Progress = Callable[[int], None]


@dataclass(slots=True)
class ImportStats:
    """Counts for the summary line; `entries` are assistant lines with usage, before de-duplication."""

    files: int = 0
    bytes: int = 0
    lines: int = 0
    entries: int = 0
    requests: int = 0
    imported: int = 0
    duplicates: int = 0
    already_metered: int = 0
    already_imported: int = 0
    malformed: int = 0
    # files skipped because they had not changed since an earlier import read them to their end
    unchanged_files: int = 0
    synthetic: int = 0
    unpriced: int = 0
    cost_nanos: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One assistant line that cost money."""

    message_id: str
    request_id: str | None
    model: str
    usage: Usage
    session_id: str | None
    cwd: str | None
    timestamp: str

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.message_id, self.request_id)


def import_id(message_id: str, request_id: str | None) -> str:
    return str(uuid.uuid5(IMPORT_NAMESPACE, f"{message_id}\n{request_id or ''}"))


def default_projects_dir(environ: Mapping[str, str]) -> Path:
    from ccgate.features.statusline import claude_config_dir

    return claude_config_dir(environ) / "projects"


def transcript_files(root: Path) -> list[Path]:
    """Every `*.jsonl` below `root` (subagent transcripts included), in a stable order."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserInputError(
            f"{root} is not a directory of Claude Code transcripts",
            hint="pass --path DIR (Claude Code keeps them in ~/.claude/projects)",
        )
    return sorted(path for path in root.rglob("*.jsonl") if path.is_file())


class _Malformed(Exception):
    pass


def _text(value: Any) -> str | None:
    """A non-empty string, else None; `_Malformed` for text SQLite cannot store (it would fail the whole import
    at insert time)."""
    if not isinstance(value, str) or not value:
        return None
    if not storable_text(value):
        raise _Malformed
    return value


# A checked assistant line: (message id, request id, model, usage object, session id, cwd, timestamp, output tokens)
_Checked = tuple[str, "str | None", str, dict[str, Any], "str | None", "str | None", str, int]


def parse_line(line: bytes) -> TranscriptEntry | str | None:
    """A priced assistant entry; "synthetic" for Claude Code's own placeholder replies; None if not billable.

    Raises `_Malformed` for a line that is not JSON or an assistant entry missing what a request needs, or whose
    usage holds a count that is not a whole number >= 0 (counts above the ceiling are clamped, not refused).
    """
    checked = _check_line(line)
    if checked is None or isinstance(checked, str):
        return checked
    return _entry(checked)


def _check_line(line: bytes) -> _Checked | str | None:
    """`parse_line`'s checks without building the entry: most assistant lines are earlier copies of a reply
    (one per content block) that a later line replaces, so only the lines that win pay for `_entry`."""
    if not line.strip():
        return None
    from ccgate.wire import fastjson

    try:
        raw = fastjson.loads(line)  # orjson: several times faster on transcripts' long lines
    except ValueError:
        raise _Malformed from None
    if not isinstance(raw, dict):
        raise _Malformed
    if raw.get("type") != "assistant":
        return None
    message = raw.get("message")
    if not isinstance(message, dict):
        raise _Malformed
    model = _text(message.get("model"))
    if model == SYNTHETIC_MODEL:
        return "synthetic"
    usage = message.get("usage")
    message_id, timestamp = _text(message.get("id")), _text(raw.get("timestamp"))
    if model is None or not isinstance(usage, dict) or message_id is None or timestamp is None:
        raise _Malformed
    if invalid_anthropic_count(usage) is not None:
        # orjson reads a count beyond 64 bits as a float; `json` keeps it an integer (clamped later)
        usage = json.loads(line).get("message", {}).get("usage")
        if not isinstance(usage, dict) or invalid_anthropic_count(usage) is not None:
            raise _Malformed  # -5 or "abc" tokens: not a record to bill from
    try:
        from_iso(timestamp)
    except (ValueError, OverflowError):  # OverflowError: year 1 with a positive offset is before datetime.min
        raise _Malformed from None
    return (
        message_id,
        _text(raw.get("requestId")),
        model,
        usage,
        _text(raw.get("sessionId")),
        _text(raw.get("cwd")),
        timestamp,
        anthropic_output_tokens(usage),
    )


def _entry(checked: _Checked) -> TranscriptEntry:
    message_id, request_id, model, usage, session_id, cwd, timestamp, _output = checked
    return TranscriptEntry(
        message_id=message_id,
        request_id=request_id,
        model=model,
        usage=usage_from_anthropic(usage),
        session_id=session_id,
        cwd=cwd,
        timestamp=timestamp,
    )


def _looks_like_object(line: bytes) -> bool:
    """Cheap stand-in for parsing a line that cannot be an assistant entry: blank, or `{...}` (else malformed)."""
    stripped = line.strip()
    return not stripped or (stripped[:1] == b"{" and stripped[-1:] == b"}")


@dataclass(frozen=True, slots=True)
class FileMark:
    """A transcript as it was when read to its end."""

    path: str
    size: int
    mtime_ns: int


def read_transcripts(
    files: Iterable[Path],
    stats: ImportStats,
    progress: Progress | None = None,
    read_to_end: list[FileMark] | None = None,
) -> dict[tuple[str, str | None], TranscriptEntry]:
    """One entry per (message id, request id): the line with the most output tokens (the final one).

    `read_to_end` collects the files read whole (not growing while read), for the next run to skip.
    """
    best: dict[tuple[str, str | None], _Checked] = {}
    for path in files:
        try:
            handle = path.open("rb")
            before = os.fstat(handle.fileno())
        except OSError:
            stats.malformed += 1
            continue
        stats.files += 1
        consumed = lines = 0
        with handle:
            for line in handle:
                size = len(line)
                consumed += size
                lines += 1
                if progress is not None:
                    progress(size)
                if b'"assistant"' not in line and _looks_like_object(line):
                    continue  # only assistant entries cost money: the rest (big tool results) is not parsed
                try:
                    checked = _check_line(line)
                except _Malformed:
                    stats.malformed += 1
                    continue
                if checked is None:
                    continue
                if isinstance(checked, str):
                    stats.synthetic += 1
                    continue
                stats.entries += 1
                key = (checked[0], checked[1])
                seen = best.get(key)
                if seen is not None:
                    stats.duplicates += 1
                    if checked[7] <= seen[7]:
                        continue  # not more output than the copy kept: the first of equals stays
                best[key] = checked
        stats.bytes += consumed
        stats.lines += lines
        if read_to_end is not None and consumed == before.st_size:
            read_to_end.append(FileMark(str(path), before.st_size, before.st_mtime_ns))
    stats.requests = len(best)
    return {key: _entry(checked) for key, checked in best.items()}  # only the winners become entries


def unchanged_files(db: Database, files: list[Path]) -> set[Path]:
    """The files an earlier import read to their end that still have the same size and mtime."""
    known = {
        str(row[0]): (int(row[1]), int(row[2])) for row in db.execute("SELECT path, size, mtime_ns FROM import_files")
    }
    same: set[Path] = set()
    for path in files:
        mark = known.get(str(path))
        if mark is None:
            continue
        try:
            status = path.stat()
        except OSError:
            continue
        if (status.st_size, status.st_mtime_ns) == mark:
            same.add(path)
    return same


def remember_files(db: Database, marks: Iterable[FileMark]) -> None:
    now = to_iso(datetime.now(UTC))
    with db.atomic():
        db.conn.executemany(
            "INSERT INTO import_files (path, size, mtime_ns, read_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "read_at = excluded.read_at",
            [(mark.path, mark.size, mark.mtime_ns, now) for mark in marks if storable_text(mark.path)],
        )


class ProjectResolver:
    """The git top-level of a cwd when it still exists (found by looking for `.git`), else the cwd itself."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __call__(self, cwd: str | None) -> str | None:
        if cwd is None:
            return None
        found = self._cache.get(cwd)
        if found is None:
            found = self._cache[cwd] = self._top(Path(cwd))
        return found

    @staticmethod
    def _top(cwd: Path) -> str:
        try:
            for directory in (cwd, *cwd.parents):
                if (directory / ".git").exists():
                    return str(directory)
        except OSError:
            pass
        return str(cwd)


def to_record(
    entry: TranscriptEntry, catalog: PriceCatalog, project: str | None, record_id: str | None = None
) -> RequestRecord:
    from ccgate.core.routing import tier_of

    started = from_iso(entry.timestamp)
    return RequestRecord(
        id=record_id or import_id(entry.message_id, entry.request_id),
        started_at=started,
        ended_at=started,
        source=SOURCE,
        session_id=entry.session_id,
        project=project,
        tier=tier_of(entry.model, {}),
        requested_model=entry.model,
        provider=PROVIDER,
        routed_model=entry.model,
        status=RequestStatus.OK,
        http_status=200,
        usage=entry.usage,
        cost=catalog.cost(entry.model, entry.usage, provider=PROVIDER, at=started),
        upstream_message_id=entry.message_id,
        upstream_request_id=entry.request_id,
    )


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _matching(db: Database, sql: str, values: Iterable[str]) -> set[str]:
    """First column of `sql` (with `{marks}` for an IN list) over `values`, queried in chunks."""
    found: set[str] = set()
    for chunk in _chunks(sorted(set(values)), _QUERY_CHUNK):
        marks = ", ".join("?" for _ in chunk)
        found.update(row[0] for row in db.execute(sql.format(marks=marks), chunk).fetchall())
    return found


# How far a sidecar row's start may lie from the transcript line of the same message. The line is written as
# the reply arrives, seconds to minutes after the request started; a day either side also covers clock changes.
METERED_WINDOW = timedelta(days=1)


def _windows(moments: Iterable[datetime], margin: timedelta) -> list[tuple[str, str]]:
    """Each moment widened by `margin` (clamped to the calendar), overlapping ranges merged, as stored-timestamp
    text bounds."""
    merged: list[list[datetime]] = []
    for moment in sorted(moments):
        low = moment - margin if moment - _EARLIEST > margin else _EARLIEST
        high = moment + margin if _LATEST - moment > margin else _LATEST
        if merged and low <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return [(to_iso(low), to_iso(high)) for low, high in merged]


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def metered_message_ids(db: Database, stamps: Iterable[tuple[str, str]]) -> set[str]:
    """Message ids of (message id, transcript timestamp) pairs that a sidecar or gateway row already holds.

    Looked up through the `started_at` index, window by window around every transcript time of an id (one
    message can appear in several transcripts, a resumed session's copy say): the ledger keeps no index on
    message ids, which would cost every metered request a random-page write.
    """
    wanted: set[str] = set()
    moments: list[datetime] = []
    for message_id, stamp in stamps:
        wanted.add(message_id)
        moments.append(from_iso(stamp))
    found: set[str] = set()
    for low, high in _windows(moments, METERED_WINDOW):
        rows = db.execute(
            "SELECT upstream_message_id FROM requests WHERE started_at >= ? AND started_at <= ? "
            "AND upstream_message_id IS NOT NULL AND source != 'import'",
            (low, high),
        )
        found.update(message_id for (message_id,) in rows if message_id in wanted)
    return found


def existing_ids(db: Database, ids: Iterable[str]) -> set[str]:
    return _matching(db, "SELECT id FROM requests WHERE id IN ({marks})", ids)


@dataclass(slots=True)
class Importer:
    """Reads transcripts and writes the new requests; the CLI adds a progress bar through `progress`."""

    db: Database
    catalog: PriceCatalog
    stats: ImportStats = field(default_factory=ImportStats)
    projects: ProjectResolver = field(default_factory=ProjectResolver)

    def run(self, files: list[Path], progress: Progress | None = None, *, skip_unchanged: bool = True) -> ImportStats:
        """Import `files`; those read to their end by an earlier run and unchanged since are skipped."""
        from ccgate.storage.ledger import insert_records

        stats = self.stats
        if skip_unchanged:
            same = unchanged_files(self.db, files)
            stats.unchanged_files = len(same)
            if progress is not None and same:
                progress(sum(path.stat().st_size for path in same if path.exists()))
            files = [path for path in files if path not in same]
        marks: list[FileMark] = []
        entries = list(read_transcripts(files, stats, progress, marks).values())
        metered = metered_message_ids(self.db, ((entry.message_id, entry.timestamp) for entry in entries))
        candidates = [entry for entry in entries if entry.message_id not in metered]
        stats.already_metered = len(entries) - len(candidates)
        ids = [import_id(entry.message_id, entry.request_id) for entry in candidates]
        done = existing_ids(self.db, ids)
        fresh = [
            to_record(entry, self.catalog, self.projects(entry.cwd), record_id)
            for entry, record_id in zip(candidates, ids, strict=True)
            if record_id not in done
        ]
        stats.already_imported = len(candidates) - len(fresh)
        stats.imported = insert_records(self.db, fresh)
        remember_files(self.db, marks)  # after the rows: a crash in between only means reading them again
        for record in fresh:
            if record.cost.nanos is None:
                stats.unpriced += 1
            else:
                stats.cost_nanos += record.cost.nanos
        return stats
