"""The ledger's single writer: one background thread, one connection, group commit.

The proxy's event loop only enqueues (a dict copy, no disk); the thread drains everything queued so far and
writes it in one transaction. Nothing here raises into the caller. A write that fails because of where it goes
(disk full, I/O error, a lock held too long) is kept in memory and tried again about once a second; one that
fails because of a value SQLite cannot store is retried alone and then written with that value clamped or emptied.
What the ledger still refuses at close is saved to a spill file and replayed at the next start (see `spill`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from ccgate.core.records import RequestRecord, RequestStatus, utcnow
from ccgate.storage import spill
from ccgate.storage.ledger import (
    COLUMNS,
    open_ledger,
    record_to_values,
    recover_pending,
    row_to_record,
    storable_values,
)

if TYPE_CHECKING:
    from sqlite_utils import Database

logger = logging.getLogger(__name__)

# Written once, with the pending row, and never changed by a later write of the same request.
_FIXED_COLUMNS = frozenset(
    (
        "id",
        "started_at",
        "source",
        "session_id",
        "project",
        "launch_id",
        "tier",
        "requested_model",
        "endpoint",
        "stream",
        "tags",
    )
)
_ROW_PLACEHOLDERS = "(" + ", ".join("?" for _ in COLUMNS) + ")"
# One statement for every kind of write. A write that is still pending (the pending row itself, or progress)
# never touches a finished row; a final write always lands. Columns of a pending record that only a final
# write fills (ended_at, status, error, latency) are NULL/'pending', which is what a pending row holds.
_UPSERT_HEAD = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES "  # noqa: S608
_UPSERT_TAIL = (
    " ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in COLUMNS if column not in _FIXED_COLUMNS)
    + " WHERE requests.status = 'pending' OR excluded.status != 'pending'"
)
# Rows per statement, a power of two. Statements hold 1, 2, 4, ... rows, so the connection caches at most seven
# prepared statements: one per row count up to 64 cost ~10 MB of resident memory (each carries the triggers).
MAX_ROWS_PER_STATEMENT = 64


@functools.lru_cache(maxsize=MAX_ROWS_PER_STATEMENT.bit_length())
def _upsert(rows: int) -> str:
    return _UPSERT_HEAD + ", ".join([_ROW_PLACEHOLDERS] * rows) + _UPSERT_TAIL


def _statement_sizes(total: int, largest: int) -> Iterator[int]:
    """`total` rows as powers of two of at most `largest` (itself a power of two), biggest first: 14 -> 8, 4, 2."""
    while total:
        size = min(largest, 1 << (total.bit_length() - 1))
        yield size
        total -= size


# Upper bound on writes per transaction, so one commit never holds the lock for long.
MAX_BATCH = 2000
# How long the writer gathers writes before committing them together (the group-commit window): the shortest
# while idle (a developer's sidecar: rows land within milliseconds, a kill -9 loses no more), growing linearly
# with the rate of writes to the longest at a busy gateway's rate, where fewer, bigger transactions leave more
# CPU and GIL to the event loop. A rate in writes (pending, progress, final) per second.
LINGER_SECONDS = 0.004
LINGER_MAX_SECONDS = 0.025
LINGER_IDLE_RATE = 50.0
LINGER_BUSY_RATE = 300.0
# The rate is a count that decays with this time constant: about the writes of the last second.
RATE_HORIZON_SECONDS = 1.0
# Requests whose latest state is kept in memory while the ledger cannot be written (disk full, I/O error, a lock
# held too long): about 1 KB each, so ~100 MB at the limit, and days of a busy developer's traffic. Past it the
# oldest are dropped, counted and logged.
MAX_BACKLOG = 100_000
# While requests wait in memory, the ledger is tried again at most this often: a full disk is not hammered.
RETRY_SECONDS = 1.0
# How long the last try at close waits for another process's lock on the ledger.
CLOSING_BUSY_TIMEOUT_MS = 1000
# While writes keep failing, the log says so at most once per this many seconds (the first failure at once).
LOG_EVERY_SECONDS = 60.0
# SQLite's primary result codes for a failure of the file or the lock, never of the values written.
_NOT_THE_ROWS_FAULT = frozenset(
    (
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOLFS,
        sqlite3.SQLITE_NOTADB,
    )
)


def _not_the_rows_fault(error: BaseException) -> bool:
    """True when a write failed because of where it goes, so the same write can succeed later unchanged."""
    if isinstance(error, MemoryError):
        return True
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _NOT_THE_ROWS_FAULT
    return False


def _describe(error: BaseException) -> str:
    """SQLite's own words for a failure of the file or the lock ("database or disk is full"): never a value."""
    name = getattr(error, "sqlite_errorname", None)
    text = str(error) or type(error).__name__
    return (f"{text} ({name})" if name else text)[:200]


def commit_window(rate: float) -> float:
    """Seconds to gather writes before a commit at `rate` writes per second: `LINGER_SECONDS` up to the idle
    rate, `LINGER_MAX_SECONDS` from the busy rate on, linear in between."""
    if not rate > LINGER_IDLE_RATE:  # also NaN
        return LINGER_SECONDS
    if rate >= LINGER_BUSY_RATE:
        return LINGER_MAX_SECONDS
    share = (rate - LINGER_IDLE_RATE) / (LINGER_BUSY_RATE - LINGER_IDLE_RATE)
    return LINGER_SECONDS + share * (LINGER_MAX_SECONDS - LINGER_SECONDS)


def decayed_rate(rate: float, elapsed: float, writes: int = 0) -> float:
    """The write rate after `elapsed` seconds in which `writes` arrived: an exponentially decaying count whose
    steady value under a constant rate is that rate, and which falls back to idle within seconds."""
    return rate * math.exp(-max(0.0, elapsed) / RATE_HORIZON_SECONDS) + writes / RATE_HORIZON_SECONDS


@dataclass(slots=True)
class _WriteRate:
    """The writer thread's estimate of writes per second, for choosing the commit window."""

    rate: float = 0.0
    at: float = 0.0

    def window(self, now: float) -> float:
        return commit_window(decayed_rate(self.rate, now - self.at))

    def observe(self, now: float, writes: int) -> None:
        self.rate = decayed_rate(self.rate, now - self.at, writes)
        self.at = now


class _Write(NamedTuple):
    """A tuple: three are made per request on the event loop (a frozen dataclass costs 3x more to build)."""

    kind: Literal["pending", "progress", "final"]
    record: RequestRecord


@dataclass(frozen=True, slots=True)
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


class _Stop:
    pass


_Item = _Write | _Flush | _Stop


def _coalesce(writes: list[_Write]) -> list[_Write]:
    """One statement per request per batch: its latest state, written the strongest way the batch asks.

    A short request often queues pending, progress and final before the thread wakes; a final upsert (or a
    pending insert carrying the latest values) says everything the three would.
    """
    if len(writes) < 2:
        return writes
    latest: dict[str, _Write] = {}
    for write in writes:
        previous = latest.get(write.record.id)
        latest[write.record.id] = write if previous is None else _merge(previous, write)
    return list(latest.values())


def _merge(previous: _Write, write: _Write) -> _Write:
    """Two writes of one request as one: the later state, written the stronger way."""
    if "final" in (previous.kind, write.kind):
        kind: Literal["pending", "progress", "final"] = "final"
    elif "pending" in (previous.kind, write.kind):
        kind = "pending"
    else:
        kind = "progress"
    # a later progress write never reopens a finished row: keep the final record
    record = previous.record if previous.kind == "final" and write.kind != "final" else write.record
    return _Write(kind, record)


class LedgerWriter:
    """Owns the ledger's write connection; the sidecar creates one at start-up and closes it at shutdown."""

    def __init__(
        self,
        path: Path,
        *,
        max_backlog: int = MAX_BACKLOG,
        retry_seconds: float = RETRY_SECONDS,
        spill_dirs: Sequence[Path] = (),
        linger: Callable[[float], None] = time.sleep,
    ) -> None:
        """`linger` waits out the commit window (a seam: tests record the windows chosen)."""
        self.path = path
        # where requests the ledger still refuses at close are saved, and replayed from at start (see `spill`)
        self.spill_dirs = tuple(spill_dirs)
        self._spill_files: tuple[Path, ...] = ()  # replayed spills, deleted once their rows are committed
        self._replayed = 0
        self._spilled = 0
        self._spill_file: Path | None = None
        self._lost_at_close = 0
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        self._recovered = 0
        self._failed_writes = 0
        self._salvaged_writes = 0
        self._commits = 0
        self._statement_rows: int | None = None
        self._linger = linger
        self._write_rate = _WriteRate(at=time.monotonic())
        # Requests the ledger could not take yet, by id, oldest first: only the writer thread changes it.
        self._backlog: dict[str, _Write] = {}
        self._max_backlog = max_backlog
        self._retry_seconds = retry_seconds
        self._retry_at = 0.0
        self._dropped = 0
        self._last_error: str | None = None
        self._failing_since: float | None = None
        self._logged_at = 0.0
        self._drops_logged = False

    @property
    def recovered(self) -> int:
        """How many leftover `pending` rows `start()` marked `interrupted`."""
        return self._recovered

    @property
    def failed_writes(self) -> int:
        """Writes dropped because of their own values: they failed, alone and clamped, with SQLite's file fine."""
        return self._failed_writes

    @property
    def salvaged_writes(self) -> int:
        """Writes that failed twice and were then stored with unstorable values clamped or emptied."""
        return self._salvaged_writes

    @property
    def unsaved(self) -> int:
        """Requests whose latest state is only in memory because the ledger could not be written (yet)."""
        return len(self._backlog)

    @property
    def dropped(self) -> int:
        """Writes lost for good: `failed_writes`, the oldest kept in memory past `MAX_BACKLOG`, and those the
        ledger still refused at `close()`."""
        return self._dropped + self._failed_writes

    @property
    def replayed(self) -> int:
        """Requests `start()` found in spill files of a previous run (committed, or kept in memory until then)."""
        return self._replayed

    @property
    def spilled(self) -> tuple[int, Path | None]:
        """At close: how many requests the ledger refused and were saved to a spill file, and that file."""
        return self._spilled, self._spill_file

    @property
    def lost_at_close(self) -> int:
        """At close: requests that neither the ledger nor any spill location took."""
        return self._lost_at_close

    def unsaved_records(self) -> list[RequestRecord]:
        """A snapshot of the requests only in memory (for budgets: their spend counts before the ledger has it)."""
        for _ in range(10):
            try:
                return [write.record for write in list(self._backlog.values())]
            except RuntimeError:  # the writer thread changed it mid-copy
                continue
        return []

    @property
    def last_error(self) -> str | None:
        """SQLite's message for the latest failure of the file or the lock ("database or disk is full")."""
        return self._last_error

    @property
    def commits(self) -> int:
        """Transactions committed so far: far fewer than writes under load (group commit)."""
        return self._commits

    def start(self) -> None:
        """Open and migrate the ledger, recover crashed rows, then start the thread. Raises LedgerError."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="ccgate-ledger-writer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            error, self._startup_error = self._startup_error, None
            raise error

    def write_pending(self, record: RequestRecord) -> None:
        self._enqueue("pending", record)

    def write_progress(self, record: RequestRecord) -> None:
        self._enqueue("progress", record)

    def write_final(self, record: RequestRecord) -> None:
        self._enqueue("final", record)

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything queued before this call is committed, kept in memory (see `unsaved`) or
        dropped for a value SQLite cannot store."""
        if self._thread is None or not self._thread.is_alive():
            return False
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self) -> None:
        """Commit what is queued (and try what is kept in memory once more), then stop the thread; later writes
        are logged and dropped."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_Stop())
        thread.join()
        self._thread = None

    def _enqueue(self, kind: Literal["pending", "progress", "final"], record: RequestRecord) -> None:
        try:
            if self._closed:
                logger.warning("ledger writer is closed; dropped %s write for request %s", kind, record.id)
                return
            # A copy: the caller keeps mutating its record while this one waits in the queue.
            self._queue.put(_Write(kind, record.copy()))
        except Exception:  # never raise into the proxy's event loop
            logger.exception("could not queue a ledger write for request %s", getattr(record, "id", "?"))

    def _run(self) -> None:
        try:
            db = open_ledger(self.path)
            self._replay(db)
            self._recovered = recover_pending(db)
        except BaseException as error:
            self._startup_error = error
            self._ready.set()
            return
        if self._recovered:
            logger.info("marked %d unfinished request(s) from a previous run as interrupted", self._recovered)
        self._ready.set()
        try:
            self._loop(db)
            if self._backlog:
                # once more at close, but with a short lock wait: the stop batch may just have waited out the
                # full busy timeout, and two such waits would outlast `sidecar stop`'s patience (it would kill
                # the process before the loss below is logged)
                db.execute(f"PRAGMA busy_timeout = {CLOSING_BUSY_TIMEOUT_MS}")
                self._retry(db)
            self._give_up()
        finally:
            db.close()

    def _loop(self, db: Database) -> None:
        stopping = False
        while not stopping:
            try:
                # with requests kept in memory, wake up to retry them even when nothing new arrives
                wait = max(0.0, self._retry_at - time.monotonic()) if self._backlog else None
                batch: list[_Item] = [self._queue.get(timeout=wait)]
            except queue.Empty:
                self._retry(db)
                continue
            if isinstance(batch[0], _Write):
                # Group commit: a request usually queues pending, progress and final within a few ms; waiting
                # that long (without the GIL) turns three transactions into one, at no cost to durability
                # beyond these milliseconds. Under load the window widens (see `commit_window`).
                self._linger(self._write_rate.window(time.monotonic()))
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            queued = [item for item in batch if isinstance(item, _Write)]
            self._write_rate.observe(time.monotonic(), len(queued))
            writes = _coalesce(queued)
            if writes:
                self._apply(db, writes)
            for item in batch:
                if isinstance(item, _Flush):
                    item.done.set()
                elif isinstance(item, _Stop):
                    stopping = True

    def _apply(self, db: Database, writes: list[_Write]) -> None:
        if self._backlog:
            # behind what is kept in memory, never beside it: a retry must not overwrite a newer state
            self._keep(writes)
            if time.monotonic() >= self._retry_at:
                self._retry(db)
            return
        try:
            self._commit(db, writes)
        except Exception as error:
            if _not_the_rows_fault(error):
                self._keep(writes)
                self._failing(error)
                return
            logger.warning("ledger write of %d row(s) failed; retrying one by one", len(writes), exc_info=True)
            time.sleep(0.05)
            done = self._one_by_one(db, writes)
            self._keep(writes[done:])

    def _one_by_one(self, db: Database, writes: list[_Write]) -> int:
        """Each write alone, salvaged or dropped if its own values fail; stops at the first failure of the file
        or the lock and returns how many writes it got through."""
        for done, write in enumerate(writes):
            try:
                self._commit(db, [write])
                continue
            except Exception as error:
                if _not_the_rows_fault(error):
                    self._failing(error)
                    return done
                failure = error
            try:
                if self._salvage(db, write):
                    continue
            except Exception as error:  # the file or the lock failed the salvaged row
                self._failing(error)
                return done
            self._failed_writes += 1
            logger.error(
                "ledger %s write for request %s failed twice; dropped", write.kind, write.record.id, exc_info=failure
            )
        return len(writes)

    def _keep(self, writes: list[_Write]) -> None:
        """Hold writes in memory, one latest state per request; past `max_backlog` the oldest go."""
        backlog = self._backlog
        for write in writes:
            previous = backlog.get(write.record.id)
            backlog[write.record.id] = write if previous is None else _merge(previous, write)
        excess = len(backlog) - self._max_backlog
        if excess <= 0:
            return
        for record_id in list(islice(backlog, excess)):
            del backlog[record_id]
        self._dropped += excess
        if not self._drops_logged:  # later drops are counted in the periodic line
            self._drops_logged = True
            logger.error(
                "ledger: %d request(s) wait in memory, the most it keeps; dropping the oldest until the ledger "
                "can be written (%s)",
                len(backlog),
                self._last_error,
            )

    def _retry(self, db: Database) -> None:
        """Write what is kept in memory, oldest first, `MAX_BATCH` requests a transaction, until one fails."""
        backlog = self._backlog
        while backlog:
            chunk = list(islice(backlog.values(), MAX_BATCH))
            try:
                self._commit(db, chunk)
                done = len(chunk)
            except Exception as error:
                if _not_the_rows_fault(error):
                    self._failing(error)
                    return
                # a value SQLite cannot store, held back along with the rest when the file failed
                done = self._one_by_one(db, chunk)
            for write in chunk[:done]:
                del backlog[write.record.id]
            if done < len(chunk):
                return
        if self._spill_files:
            spill.remove(self._spill_files)  # every replayed row is committed now
            self._spill_files = ()
        if self._failing_since is not None:
            lost = f"; {self.dropped} lost so far" if self.dropped else ""
            logger.warning(
                "ledger: writes work again after %.0f s; everything kept in memory is saved%s",
                time.monotonic() - self._failing_since,
                lost,
            )
            self._failing_since = None
            self._drops_logged = False

    def _failing(self, error: BaseException) -> None:
        """Note a failure of the file or the lock: retry later, log the first at once and then once a minute."""
        now = time.monotonic()
        self._retry_at = now + self._retry_seconds
        self._last_error = _describe(error)
        if self._failing_since is None:
            self._failing_since = self._logged_at = now
            logger.error(
                "ledger write failed: %s; keeping the request(s) in memory and retrying every %g s",
                self._last_error,
                self._retry_seconds,
            )
        elif now - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = now
            logger.error(
                "ledger writes still failing: %s; %d request(s) kept in memory, %d dropped",
                self._last_error,
                len(self._backlog),
                self.dropped,
            )

    def _give_up(self) -> None:
        """At close, what the ledger still refuses goes to a spill file for the next start; if no spill location
        takes it, it is lost: say how much, once."""
        if not self._backlog:
            return
        count = len(self._backlog)
        path = self._spill() if self.spill_dirs else None
        self._backlog.clear()
        if path is not None:
            self._spilled, self._spill_file = count, path
            logger.warning(
                "ledger writer stopped; %d request(s) it could not write (%s) are saved in %s and go to the ledger "
                "when the sidecar starts again",
                count,
                self._last_error,
                path,
            )
            return
        self._dropped += count
        self._lost_at_close = count
        where = "; no spill location took them either" if self.spill_dirs else ""
        logger.error(
            "ledger writer stopped; %d request(s) it could not write are lost (%s)%s", count, self._last_error, where
        )

    def _spill(self) -> Path | None:
        """The backlog as JSON lines in the first spill location that takes it; replayed spills it now holds are
        deleted once the new file is synced."""
        try:
            data = spill.encode_rows(
                dict(zip(COLUMNS, record_to_values(write.record), strict=True)) for write in self._backlog.values()
            )
        except Exception:  # a record that cannot be flattened at all: nothing sensible to save
            logger.exception("could not serialise the requests kept in memory for a spill file")
            return None
        path = spill.write_spill(self.spill_dirs, data, pid=os.getpid())
        if path is not None and self._spill_files:
            spill.remove(self._spill_files)
            self._spill_files = ()
        return path

    def _replay(self, db: Database) -> None:
        """Spills of a previous run, written to the ledger before anything else (idempotent: keyed by request id,
        a late state never reopens a finished row). What the ledger refuses now waits in memory like any write,
        its file kept until it is committed."""
        if not self.spill_dirs:
            return
        found = spill.read_spills(self.spill_dirs)
        if found.unreadable:
            logger.error("ledger: %d unreadable line(s) or file(s) in spill files; skipped", found.unreadable)
        if not found.files:
            return
        writes: list[_Write] = []
        for row in found.rows:
            try:
                record = row_to_record(row)
            except Exception:
                logger.error("ledger: a spilled request (%s) cannot be read back; skipped", str(row.get("id"))[:64])
                continue
            if record.status is RequestStatus.PENDING:  # its process is gone: it ended the way a crash ends it
                record.status = RequestStatus.INTERRUPTED
                record.ended_at = record.ended_at or utcnow()
                record.error_type = record.error_type or "interrupted"
                record.error_message = record.error_message or "ccgate stopped before this request finished"
            writes.append(_Write("final", record))
        self._replayed = len(writes)
        self._spill_files = found.files
        self._keep(writes)
        self._retry(db)
        if self._backlog:
            logger.error(
                "ledger: %d request(s) saved at the last stop still cannot be written (%s); kept in memory",
                len(self._backlog),
                self._last_error,
            )
        else:
            logger.info("ledger: wrote %d request(s) saved at the last stop", self._replayed)

    def _salvage(self, db: Database, write: _Write) -> bool:
        """A row with a value SQLite cannot hold (an absurd count, a provider's id that is not text) is written
        with that value clamped or emptied and a note, rather than lost with everything else it records.

        Raises what the file or the lock raised, so the caller keeps the write for later."""
        salvaged = storable_values(write.record)
        if salvaged is None:
            return False
        values, replaced = salvaged
        try:
            self._commit_rows(db, [values])
        except Exception as error:
            if _not_the_rows_fault(error):
                raise
            return False
        self._salvaged_writes += 1
        logger.error(
            "ledger %s write for request %s held values SQLite cannot store (%s); written with them clamped or emptied",
            write.kind,
            write.record.id,
            ", ".join(replaced),
        )
        return True

    def _commit(self, db: Database, writes: list[_Write]) -> None:
        # _coalesce left one write per request, so the rows' ids are distinct.
        self._commit_rows(db, [record_to_values(write.record) for write in writes])

    def _commit_rows(self, db: Database, rows: list[tuple[object, ...]]) -> None:
        # A few multi-row statements per transaction, not one per row: sqlite3 releases the GIL around every
        # statement step, and under load each re-acquisition is a context switch away from the event loop.
        conn = db.conn
        start = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for size in _statement_sizes(len(rows), self._rows_per_statement(conn)):
                chunk = rows[start : start + size]
                start += size
                conn.execute(_upsert(size), list(chain.from_iterable(chunk)))  # flat, as bound; C-speed
            conn.execute("COMMIT")
            self._commits += 1
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _rows_per_statement(self, conn: sqlite3.Connection) -> int:
        """The largest power of two of rows that fits: SQLite before 3.32 allows only 999 bound values."""
        if self._statement_rows is None:
            fits = max(
                1, min(MAX_ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(COLUMNS))
            )
            self._statement_rows = 1 << (fits.bit_length() - 1)
        return self._statement_rows
