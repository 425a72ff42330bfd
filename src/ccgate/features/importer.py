"""`ccgate import claude-code`: backfill the ledger from Claude Code's JSONL transcripts.

Each assistant line of `~/.claude/projects/**/*.jsonl` carries `message.id`, `message.model`, `message.usage`,
`requestId`, `sessionId`, `cwd` and `timestamp`. A streamed reply is written once per content block, so the
same (message id, request id) appears on several lines: it is one request, and the line with the most output
tokens wins. Requests the sidecar already metered (same upstream message id) are skipped, and imported rows
get deterministic ids, so running the import again adds nothing.

Speed (200,000 lines, 230 MB, on the first run): a buffer whose lines are all `{...}` is read by msgspec in one call
(just the billed fields; only lines holding `"assistant"` count, as when lines are read one by one, which is the
fallback); winners are priced with integer rates per model (`PriceCatalog.count_pricer`); files are read and
priced in forked worker processes; the rows go in through `storage.importing` in bulk. A re-run opens only the
files that changed, and a grown one from where it stopped.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ccgate.core.records import RequestRecord, RequestStatus, Usage, from_iso, to_iso
from ccgate.core.usage import MAX_TOKENS, anthropic_output_tokens, invalid_anthropic_count, usage_from_anthropic
from ccgate.errors import UserInputError
from ccgate.storage.importing import FileMark
from ccgate.storage.ledger import storable_text

if TYPE_CHECKING:
    from ccgate.core.pricing import CountPricer, PriceCatalog
    from ccgate.storage.migrations import SqlDatabase
    from ccgate.wire.fastjson import TranscriptLine, TranscriptUsage

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


_NAMESPACE_BYTES = IMPORT_NAMESPACE.bytes


# the hex digit of a UUID's variant nibble (RFC 4122: 10xx) for each hex digit of the digest there
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _fast_import_id(message_id: str, request_id: str | None) -> str:
    """`import_id` without building `UUID` objects (a third of the time per imported row went there)."""
    seeded = _SEEDED.get("sha1")
    if seeded is None:
        from hashlib import sha1

        seeded = _SEEDED["sha1"] = sha1(_NAMESPACE_BYTES, usedforsecurity=False)
    digest = seeded.copy()  # the namespace already hashed
    digest.update(f"{message_id}\n{request_id or ''}".encode())
    text = digest.hexdigest()
    return f"{text[:8]}-{text[8:12]}-5{text[13:16]}-{_VARIANT[text[16]]}{text[17:20]}-{text[20:32]}"


_SEEDED: dict[str, Any] = {}


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
_Checked = tuple[str, "str | None", str, "dict[str, Any] | TranscriptUsage", "str | None", "str | None", str, int]


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


def _usage(raw: dict[str, Any] | TranscriptUsage) -> Usage:
    return usage_from_anthropic(raw if type(raw) is dict else raw.to_dict())  # type: ignore[union-attr]


def _entry(checked: _Checked) -> TranscriptEntry:
    message_id, request_id, model, usage, session_id, cwd, timestamp, _output = checked
    return TranscriptEntry(
        message_id=message_id,
        request_id=request_id,
        model=model,
        usage=_usage(usage),
        session_id=session_id,
        cwd=cwd,
        timestamp=timestamp,
    )


def _looks_like_object(line: bytes) -> bool:
    """Cheap stand-in for parsing a line that cannot be an assistant entry: blank, or `{...}` (else malformed)."""
    stripped = line.strip()
    return not stripped or (stripped[:1] == b"{" and stripped[-1:] == b"}")


def _check_fast(line: bytes, read: Callable[[bytes], TranscriptLine]) -> _Checked | str | None:
    """`_check_line` for a line of UTF-8 bytes, reading only the fields it needs (`read`: msgspec); a line msgspec
    refuses (a float count, a field of an unexpected type, ...) goes to `_check_line`, which decides as always."""
    try:
        head = read(line)
    except ValueError:
        return _check_line(line)
    if head.type != "assistant":
        return None
    return _check_head(head)


def _check_head(head: TranscriptLine) -> _Checked | str:
    """`_check_line`'s checks of an assistant line msgspec read."""
    message = head.message
    if message is None:
        raise _Malformed
    model = message.model or None
    if model == SYNTHETIC_MODEL:
        return "synthetic"
    usage, message_id, timestamp = message.usage, message.id or None, head.timestamp or None
    if model is None or usage is None or message_id is None or timestamp is None or not valid_time(timestamp):
        raise _Malformed
    output = usage.output_tokens
    return (
        message_id,
        head.request_id or None,
        model,
        usage,
        head.session_id or None,
        head.cwd or None,
        timestamp,
        0 if output is None else min(output, MAX_TOKENS),
    )


_NEEDLE = b'"assistant"'
# Bytes read at a time; a transcript's lines are whole within what is scanned at once.
CHUNK_BYTES = 16 * 1024 * 1024
# Bytes at the start and before `resume_at` whose digest tells a transcript that grew from one rewritten.
TAIL_BYTES = 4096


def _tail_hash(data: bytes) -> bytes:
    import hashlib

    return hashlib.blake2b(data, digest_size=16).digest()


# Buffers of shorter lines on average are read line by line: reading them all at once would build an object per
# line (a 16 MB buffer of `{}` lines: millions), for lines that are no transcript's
MIN_AVERAGE_LINE = 128


def _line_starts(buf: bytes) -> list[int] | None:
    """Where each line of `buf` starts (and, last, where the buffer ends past its last newline), when every line is
    `{...}` with nothing around it and lines are not tiny; None otherwise. One pass of `find`: cheaper than counting
    `}\\n{`."""
    find = buf.find
    starts = [0]
    most = len(buf) // MIN_AVERAGE_LINE + 1
    start, end = 0, find(b"\n")
    while end >= 0:
        if end == start or buf[start] != 0x7B or buf[end - 1] != 0x7D or len(starts) > most:
            return None
        start = end + 1
        starts.append(start)
        end = find(b"\n", start)
    if start < len(buf):
        if buf[start] != 0x7B or buf[-1] != 0x7D:
            return None
        starts.append(len(buf) + 1)
    return starts


def _only_objects(buf: bytes, lines: int) -> bool:
    """Every line of `buf` (`lines` newlines) is `{...}` with nothing around it: then a line without `"assistant"`
    needs no look."""
    if buf.endswith(b"\n"):
        return buf.startswith(b"{") and buf.endswith(b"}\n") and buf.count(b"}\n{") == lines - 1
    return buf.startswith(b"{") and buf.endswith(b"}") and buf.count(b"}\n{") == lines


def _utf8(buf: bytes) -> bool:
    if buf.isascii():
        return True
    try:
        buf.decode()
    except UnicodeDecodeError:
        return False
    return True


@dataclass(slots=True)
class FileScan:
    """What one transcript held: its winners by (message id, request id), counted into `stats`."""

    stats: ImportStats = field(default_factory=ImportStats)
    best: dict[tuple[str, str | None], _Checked] = field(default_factory=dict)
    mark: FileMark | None = None
    # the winners as ledger rows, for `Importer`: (transcript timestamp, `import_row`, output tokens)
    rows: dict[tuple[str, str | None], tuple[str, tuple[Any, ...], int]] = field(default_factory=dict)

    def scan(self, buf: bytes) -> None:
        """Count the lines of `buf` (whole lines, the last one possibly unterminated) and keep each reply's best."""
        stats = self.stats
        stats.bytes += len(buf)
        starts = _line_starts(buf)
        if starts is None:
            self._scan_lines(buf)
            return
        lines = len(starts) - 1
        stats.lines += lines
        if not _utf8(buf):
            for index in range(lines):
                line = buf[starts[index] : starts[index + 1] - 1]
                if _NEEDLE in line:
                    self._take(line, _check_line)
            return
        from ccgate.wire.fastjson import read_transcript_lines

        try:
            heads = read_transcript_lines(buf)
        except ValueError:
            heads = []
        if len(heads) == lines:
            # every line is `{...}`, so no value spans two lines: one value per line, in order
            self._take_heads(buf, heads, starts)
            return
        self._scan_needles(buf)

    def _scan_lines(self, buf: bytes) -> None:
        """`scan` line by line: a buffer with lines that are not `{...}`, or very many short ones."""
        newlines = buf.count(b"\n")
        self.stats.lines += newlines + (0 if buf.endswith(b"\n") or not buf else 1)
        if _utf8(buf) and _only_objects(buf, newlines):
            self._scan_needles(buf)
            return
        for line in buf.split(b"\n"):
            if _NEEDLE not in line and _looks_like_object(line):
                continue  # only assistant entries cost money: the rest (big tool results) is not parsed
            self._take(line, _check_line)

    def _scan_needles(self, buf: bytes) -> None:
        """Each line of `buf` (UTF-8, every line `{...}`) holding `"assistant"`, read by msgspec one by one."""
        from ccgate.wire.fastjson import read_transcript_line

        check = partial(_check_fast, read=read_transcript_line)
        position = buf.find(_NEEDLE)
        while position >= 0:
            start = buf.rfind(b"\n", 0, position) + 1
            end = buf.find(b"\n", position)
            if end < 0:
                end = len(buf)
            self._take(buf[start:end], check)
            position = buf.find(_NEEDLE, end)

    def _take_heads(self, buf: bytes, heads: list[TranscriptLine], starts: list[int]) -> None:
        """`_take` for lines msgspec read all at once; as line by line, only lines holding `"assistant"` count."""
        stats, best, find = self.stats, self.best, buf.find
        for index, head in enumerate(heads):
            if head.type != "assistant" or find(_NEEDLE, starts[index], starts[index + 1]) < 0:
                continue
            try:
                checked = _check_head(head)
            except _Malformed:
                stats.malformed += 1
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
                    continue
            best[key] = checked

    def _take(self, line: bytes, check: Callable[[bytes], _Checked | str | None]) -> None:
        stats = self.stats
        try:
            checked = check(line)
        except _Malformed:
            stats.malformed += 1
            return
        if checked is None:
            return
        if isinstance(checked, str):
            stats.synthetic += 1
            return
        stats.entries += 1
        key = (checked[0], checked[1])
        seen = self.best.get(key)
        if seen is not None:
            stats.duplicates += 1
            if checked[7] <= seen[7]:
                return  # not more output than the copy kept: the first of equals stays
        self.best[key] = checked


def _tail_hash_at(fd: int, offset: int) -> bytes:
    """A digest of the first and the last `TAIL_BYTES` before `offset`: a file rewritten (not appended to) under
    the same inode differs there (Claude Code only appends; an editor or a tool rewriting it changes its head)."""
    head = os.pread(fd, min(TAIL_BYTES, offset), 0)
    start = max(0, offset - TAIL_BYTES)
    return _tail_hash(head + os.pread(fd, offset - start, start))


def _resume_at(fd: int, status: os.stat_result, mark: FileMark | None) -> int:
    """Where to start reading: where an earlier import stopped, if the file is the same one and only grew."""
    if mark is None or mark.resume_at is None or mark.tail_hash is None or mark.inode != status.st_ino:
        return 0
    if mark.resume_at > status.st_size or _tail_hash_at(fd, mark.resume_at) != mark.tail_hash:
        return 0  # truncated, or rewritten: read it all again (rows already imported are recognised)
    return mark.resume_at


def scan_file(path: Path, mark: FileMark | None = None, progress: Progress | None = None) -> FileScan | None:
    """Read `path` from where `mark` says an earlier import stopped (or from its start); None if unreadable.

    Reads the size it had when opened: lines appended meanwhile are for the next run. The mark it returns
    records that size and the end of the last whole line (a last line without its newline may still be being
    written: the next run reads it again).
    """
    result = FileScan()
    try:
        handle = path.open("rb", buffering=0)
    except OSError:
        return None
    with handle:
        fd = handle.fileno()
        try:
            status = os.fstat(fd)
            position = resume_at = _resume_at(fd, status, mark)
            handle.seek(position)
            carry = b""
            while position < status.st_size:
                chunk = handle.read(min(CHUNK_BYTES, status.st_size - position))
                if not chunk:
                    break  # truncated while read
                buf = carry + chunk if carry else chunk
                last = position + len(chunk) >= status.st_size
                cut = len(buf) if last else buf.rfind(b"\n") + 1
                carry = buf[cut:]
                if cut:
                    result.scan(buf[:cut])
                    newline = buf.rfind(b"\n", 0, cut)
                    if newline >= 0:
                        resume_at = position - (len(buf) - len(chunk)) + newline + 1
                    if progress is not None:
                        progress(cut)
                position += len(chunk)
            if carry:
                result.scan(carry)
            tail = _tail_hash_at(fd, resume_at)
        except OSError:
            return None
    result.stats.files = 1
    result.mark = FileMark(str(path), status.st_size, status.st_mtime_ns, status.st_ino, resume_at, tail)
    return result


def read_transcripts(
    files: Iterable[Path],
    stats: ImportStats,
    progress: Progress | None = None,
    read_to_end: list[FileMark] | None = None,
    marks: Mapping[str, FileMark] | None = None,
) -> dict[tuple[str, str | None], TranscriptEntry]:
    """One entry per (message id, request id): the line with the most output tokens (the final one).

    `read_to_end` collects where each file was read up to, for the next run; `marks` are an earlier run's.
    """
    scans = (scan_file(path, None if marks is None else marks.get(str(path)), progress) for path in files)
    best = merge_scans(scans, _winners, stats, read_to_end)
    return {key: _entry(checked) for key, checked in best.items()}  # only the winners become entries


_Winner = TypeVar("_Winner", bound=tuple[Any, ...])


def _winners(scan: FileScan) -> dict[tuple[str, str | None], _Checked]:
    return scan.best


def merge_scans(
    scans: Iterable[FileScan | None],
    winners: Callable[[FileScan], dict[tuple[str, str | None], _Winner]],
    stats: ImportStats,
    read_to: list[FileMark] | None = None,
) -> dict[tuple[str, str | None], _Winner]:
    """The files' winners, in file order, under the same rule as within a file: the first of the most output
    (a winner's last item is its output tokens)."""
    best: dict[tuple[str, str | None], _Winner] = {}
    for scan in scans:
        if scan is None:
            stats.malformed += 1  # a file that cannot be read
            continue
        part = scan.stats
        for name in ("files", "bytes", "lines", "entries", "duplicates", "malformed", "synthetic"):
            setattr(stats, name, getattr(stats, name) + getattr(part, name))
        for key, winner in winners(scan).items():
            seen = best.get(key)
            if seen is not None:
                stats.duplicates += 1
                if winner[-1] <= seen[-1]:
                    continue
            best[key] = winner
        if read_to is not None and scan.mark is not None:
            read_to.append(scan.mark)
    stats.requests = len(best)
    return best


# What a worker process prices with (set before the pool forks, so it is inherited, never pickled).
_WORKER: dict[str, Any] = {}


def scan_to_rows(
    path: Path,
    mark: FileMark | None,
    rows: RowMaker,
    progress: Progress | None = None,
) -> FileScan | None:
    """`scan_file`, then the file's winners as ledger rows (in a worker process: pricing is most of the work)."""
    scan = scan_file(path, mark, progress)
    if scan is None:
        return None
    scan.rows = {key: (checked[6], rows(checked), checked[7]) for key, checked in scan.best.items()}
    scan.best = {}
    return scan


def _worker_scan(job: tuple[Path, FileMark | None]) -> FileScan | None:
    rows = _WORKER.get("rows")
    if rows is None:  # first job of this worker process: its own caches
        rows = _WORKER["rows"] = RowMaker(_WORKER["catalog"])
    return scan_to_rows(job[0], job[1], rows)


# Below this many bytes to read, starting processes costs more than it saves.
PARALLEL_MIN_BYTES = 32 * 1024 * 1024
MAX_WORKERS = 8


def default_workers() -> int:
    """One process per idle CPU this process may run on (at most `MAX_WORKERS`), where processes can be forked.

    Workers cost CPU time of their own (a 250 MB first import: ~0.4 s more over two of them than in one process),
    which only buys a shorter wait when CPUs are idle: on a machine whose load already fills them, one process.
    A CPU at least a quarter idle counts: the 1-minute load average lags, still counting processes that just ended.
    """
    if sys.platform != "linux":
        return 1  # fork is Linux's safe default only; elsewhere starting a process re-imports everything
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        idle = cpus - os.getloadavg()[0]
    except OSError:
        idle = cpus
    return max(1, min(cpus, MAX_WORKERS, int(idle + 0.75)))


def scan_files(
    jobs: list[tuple[Path, FileMark | None, int]],
    catalog: PriceCatalog,
    progress: Progress | None = None,
    workers: int = 1,
) -> Iterator[FileScan | None]:
    """`scan_to_rows` over `jobs` (path, mark, size), in order; in `workers` forked processes when there is
    enough to read. The caller must run no other thread (a fork copies only this one)."""
    workers = min(workers, len(jobs))
    if workers <= 1 or sum(size for _path, _mark, size in jobs) < PARALLEL_MIN_BYTES:
        rows = RowMaker(catalog)
        for path, mark, _size in jobs:
            yield scan_to_rows(path, mark, rows, progress)
        return
    import multiprocessing

    # what every worker needs, loaded once before the fork rather than once per worker: the price catalog, the
    # JSON readers, the seeded id digest
    catalog.rates("claude-sonnet-4-5", provider=PROVIDER)
    import ccgate.wire.fastjson  # noqa: F401

    _fast_import_id("", None)
    _WORKER["catalog"] = catalog
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            # a few jobs per message: each one is a round trip through the pool's pipes and threads
            chunk = max(1, len(jobs) // (workers * 8))
            results = pool.imap(_worker_scan, [(path, mark) for path, mark, _size in jobs], chunksize=chunk)
            for (_path, _mark, size), result in zip(jobs, results, strict=True):
                if progress is not None:
                    progress(size)
                yield result
    finally:
        _WORKER.clear()


def unchanged_files(db: SqlDatabase, files: list[Path]) -> set[Path]:
    """The files an earlier import read to their end that still have the same size, mtime and inode."""
    from ccgate.storage.importing import load_marks

    return {path for path, _status in unchanged(load_marks(db), stat_files(files))}


def stat_files(files: Iterable[Path]) -> list[tuple[Path, os.stat_result | None]]:
    out: list[tuple[Path, os.stat_result | None]] = []
    for path in files:
        try:
            out.append((path, path.stat()))
        except OSError:
            out.append((path, None))
    return out


def unchanged(
    marks: Mapping[str, FileMark], files: Iterable[tuple[Path, os.stat_result | None]]
) -> list[tuple[Path, os.stat_result]]:
    """The files an earlier import read up to their present size, with the same mtime and inode since."""
    same: list[tuple[Path, os.stat_result]] = []
    for path, status in files:
        mark = marks.get(str(path))
        if mark is None or status is None or (status.st_size, status.st_mtime_ns) != (mark.size, mark.mtime_ns):
            continue
        if mark.inode is None or mark.inode == status.st_ino:  # no inode: a mark from before they were kept
            same.append((path, status))
    return same


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


def _matching(db: SqlDatabase, sql: str, values: Iterable[str]) -> set[str]:
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


def metered_message_ids(db: SqlDatabase, stamps: Iterable[tuple[str, str]]) -> set[str]:
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


def existing_ids(db: SqlDatabase, ids: Iterable[str]) -> set[str]:
    return _matching(db, "SELECT id FROM requests WHERE id IN ({marks})", ids)


def import_row(
    checked: _Checked, catalog: PriceCatalog, projects: ProjectResolver, tiers: dict[str, str | None]
) -> tuple[Any, ...]:
    """The ledger row (`storage.importing.IMPORT_ROW`) of a winning line: what `to_record` and `record_to_values`
    make of it, without the objects in between (tests hold the two equal)."""
    return RowMaker(catalog, projects, tiers)(checked)


def _clamp(count: int | None) -> int | None:
    return count if count is None or count <= MAX_TOKENS else MAX_TOKENS


def usage_counts(raw: TranscriptUsage) -> tuple[int, int, int, int, int, int, str | None]:
    """`usage_from_anthropic(raw.to_dict())` as a tuple, for a usage msgspec read (every count a whole number >= 0
    or None), without the dict and the dataclass in between (tests hold the two equal)."""
    creation, server = raw.cache_creation, raw.server_tool_use
    split_5m = None if creation is None else _clamp(creation.ephemeral_5m_input_tokens)
    split_1h = None if creation is None else _clamp(creation.ephemeral_1h_input_tokens)
    write_5m = split_5m or 0
    write_1h = split_1h or 0  # what is not known to be 1h counts as 5m
    total = _clamp(raw.cache_creation_input_tokens)
    if total is not None:
        write_5m = max(write_5m, total - write_1h)  # the total wins unless the breakdown claims more
    searches = None if server is None else _clamp(server.web_search_requests)
    speed = raw.speed
    return (
        _clamp(raw.input_tokens) or 0,
        _clamp(raw.output_tokens) or 0,
        _clamp(raw.cache_read_input_tokens) or 0,
        write_5m,
        write_1h,
        searches or 0,
        speed if type(speed) is str and 0 < len(speed) <= _MAX_SPEED else None,
    )


_MAX_SPEED = 32
# UTC with milliseconds (Claude Code's form) or microseconds (the stored form)
_CANONICAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}(?:[0-9]{3})?Z")


def valid_time(timestamp: str) -> bool:
    """Whether `from_iso` reads `timestamp`. Every checked line pays for this: a time whose only "Z" ends it (Claude
    Code's form) is parsed as it is, with no pattern matched first and no copy made with "+00:00" (the "Z" reads
    as UTC as "+00:00" does); what that refuses goes to `from_iso`, which decides."""
    if timestamp[-1:] == "Z" and timestamp.find("Z") == len(timestamp) - 1:
        try:
            datetime.fromisoformat(timestamp)
        except ValueError:
            pass
        else:
            return True
    try:
        from_iso(timestamp)
    except (ValueError, OverflowError):  # OverflowError: year 1 with a positive offset is before datetime.min
        return False
    return True


def stored_time(timestamp: str) -> str:
    """`to_iso(from_iso(timestamp))` of a timestamp already checked; Claude Code's own form without parsing it."""
    if _CANONICAL_TIME.fullmatch(timestamp):
        return timestamp if len(timestamp) == 27 else timestamp[:23] + "000Z"
    return to_iso(from_iso(timestamp))


class RowMaker:
    """Ledger rows of winning lines, priced with integer arithmetic per model (`PriceCatalog.count_pricer`) and by
    `PriceCatalog.cost` where that cannot (unpriced, fast mode, counts at the ceiling, usage read in full)."""

    def __init__(
        self,
        catalog: PriceCatalog,
        projects: ProjectResolver | None = None,
        tiers: dict[str, str | None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.projects = projects or ProjectResolver()
        self.tiers = {} if tiers is None else tiers
        # a model priced the same at every moment: its pricer (None: ask `cost`); others are looked up per row
        self._timeless: dict[str, CountPricer | None] = {}

    def _tier(self, model: str) -> str | None:
        tier = self.tiers.get(model, _UNSET)
        if tier is _UNSET:
            from ccgate.core.routing import tier_of

            tier = self.tiers[model] = tier_of(model, {})
        return tier  # type: ignore[no-any-return]

    def _pricer(self, model: str, timestamp: str) -> CountPricer | None:
        pricer = self._timeless.get(model, _UNSET)
        if pricer is not _UNSET:
            return pricer  # type: ignore[no-any-return]
        found = self.catalog.count_pricer(model, provider=PROVIDER, at=from_iso(timestamp))
        if self.catalog.timeless(model, provider=PROVIDER):
            self._timeless[model] = found
        return found

    def __call__(self, checked: _Checked) -> tuple[Any, ...]:
        message_id, request_id, model, raw, session_id, cwd, timestamp, _output = checked
        if type(raw) is dict:
            usage = _usage(raw)
            counts = (
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_read_tokens,
                usage.cache_write_5m_tokens,
                usage.cache_write_1h_tokens,
                usage.web_searches,
                usage.speed,
            )
        else:
            counts = usage_counts(raw)  # type: ignore[arg-type]
        inp, out, read, write_5m, write_1h, searches, speed = counts
        nanos: int | None = None
        pricer = self._pricer(model, timestamp) if speed is None or speed == "standard" else None
        if pricer is not None:
            nanos = pricer.nanos(inp, out, read, write_5m, write_1h, searches)
        if pricer is not None and nanos is not None:
            quality, priced_model, note = pricer.quality.value, pricer.priced_model, pricer.note
        else:
            usage = Usage(inp, out, read, write_5m, write_1h, searches, speed)
            cost = self.catalog.cost(model, usage, provider=PROVIDER, at=from_iso(timestamp))
            nanos, quality, priced_model, note = cost.nanos, cost.quality.value, cost.priced_model, cost.note
        return (
            _fast_import_id(message_id, request_id),
            stored_time(timestamp),
            session_id,
            self.projects(cwd),
            self._tier(model),
            model,
            inp,
            out,
            read,
            write_5m,
            write_1h,
            searches,
            nanos,
            quality,
            priced_model,
            note,
            message_id,
            request_id,
            speed,
        )


_UNSET: Any = object()


@dataclass(slots=True)
class Importer:
    """Reads transcripts and writes the new requests; the CLI adds a progress bar through `progress`."""

    db: SqlDatabase
    catalog: PriceCatalog
    stats: ImportStats = field(default_factory=ImportStats)
    # processes reading and pricing transcripts (`default_workers()` in the CLI); 1 reads in this process
    workers: int = 1

    def run(self, files: list[Path], progress: Progress | None = None, *, skip_unchanged: bool = True) -> ImportStats:
        """Import `files`: those an earlier run read up to their present size are skipped, those that only grew
        since are read from where it stopped."""
        import gc

        # hundreds of thousands of tuples and no cycles among them: the collector would only walk them, again and
        # again (a tenth of the time); worker processes inherit this
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run(files, progress, skip_unchanged=skip_unchanged)
        finally:
            if collecting:
                gc.enable()

    def _run(self, files: list[Path], progress: Progress | None, *, skip_unchanged: bool) -> ImportStats:
        from ccgate.storage.importing import insert_import_rows, load_marks

        stats = self.stats
        marks = load_marks(self.db) if skip_unchanged else {}
        statuses = stat_files(files)
        same = unchanged(marks, statuses)
        stats.unchanged_files = len(same)
        if progress is not None and same:
            progress(sum(status.st_size for _path, status in same))
        skipped = {path for path, _status in same}
        jobs = [
            (path, marks.get(str(path)), 0 if status is None else status.st_size)
            for path, status in statuses
            if path not in skipped
        ]
        read_to: list[FileMark] = []
        scans = scan_files(jobs, self.catalog, progress, self.workers)
        best = merge_scans(scans, lambda scan: scan.rows, stats, read_to)
        # a first import into an empty ledger has nothing to look up (44,000 timestamps parsed, 90 queries)
        empty = not self.db.execute("SELECT EXISTS (SELECT 1 FROM requests)").fetchone()[0]
        metered = set() if empty else metered_message_ids(self.db, ((k[0], w[0]) for k, w in best.items()))
        rows = [winner[1] for key, winner in best.items() if key[0] not in metered]
        stats.already_metered = len(best) - len(rows)
        done = set() if empty else existing_ids(self.db, (row[0] for row in rows))
        fresh = [row for row in rows if row[0] not in done]
        stats.already_imported = len(rows) - len(fresh)
        # the marks go in with the rows: a kill in between only means reading those files again
        stats.imported = insert_import_rows(self.db, fresh, read_to)
        for row in fresh:
            if row[12] is None:
                stats.unpriced += 1
            else:
                stats.cost_nanos += row[12]
        return stats
