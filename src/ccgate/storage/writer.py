"""The ledger's single writer: one background thread, one connection, group commit.

The proxy's event loop only enqueues (a dict copy, no disk); the thread drains everything queued so far and
writes it in one transaction. Nothing here raises into the caller: failures are logged and retried once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from ccgate.models import RequestRecord
from ccgate.storage.ledger import COLUMNS, open_ledger, record_to_values, recover_pending

if TYPE_CHECKING:
    from sqlite_utils import Database

logger = logging.getLogger(__name__)

_COLUMN_LIST = ", ".join(COLUMNS)
_PLACEHOLDERS = ", ".join("?" for _ in COLUMNS)
_INSERT_PENDING = f"INSERT INTO requests ({_COLUMN_LIST}) VALUES ({_PLACEHOLDERS}) ON CONFLICT(id) DO NOTHING"  # noqa: S608
_UPSERT_FINAL = (
    f"INSERT INTO requests ({_COLUMN_LIST}) VALUES ({_PLACEHOLDERS}) "  # noqa: S608
    "ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in COLUMNS if column != "id")
)
# What a running request learns along the way; a row that is already final is never regressed.
_PROGRESS_COLUMNS = (
    "provider",
    "routed_model",
    "http_status",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "web_searches",
    "cost_nanos",
    "price_quality",
    "priced_model",
    "cost_note",
    "ttfb_ms",
    "upstream_message_id",
    "upstream_request_id",
    "attempts",
)
_UPDATE_PROGRESS = (
    "UPDATE requests SET "  # noqa: S608
    + ", ".join(f"{column} = ?" for column in _PROGRESS_COLUMNS)
    + " WHERE id = ? AND status = 'pending'"
)
# positions in `COLUMNS` of the progress columns, then of the id (the WHERE clause)
_PROGRESS_PICK: Final = tuple(COLUMNS.index(column) for column in (*_PROGRESS_COLUMNS, "id"))

# Upper bound on writes per transaction, so one commit never holds the lock for long.
MAX_BATCH = 2000
# How long the writer gathers writes before committing them together.
LINGER_SECONDS = 0.004


@dataclass(frozen=True, slots=True)
class _Write:
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
        if previous is None:
            latest[write.record.id] = write
            continue
        if "final" in (previous.kind, write.kind):
            kind: Literal["pending", "progress", "final"] = "final"
        elif "pending" in (previous.kind, write.kind):
            kind = "pending"
        else:
            kind = "progress"
        # a later progress write never reopens a finished row: keep the final record
        record = previous.record if previous.kind == "final" and write.kind != "final" else write.record
        latest[write.record.id] = _Write(kind, record)
    return list(latest.values())


class LedgerWriter:
    """Owns the ledger's write connection; the sidecar creates one at start-up and closes it at shutdown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        self._recovered = 0
        self._failed_writes = 0
        self._commits = 0

    @property
    def recovered(self) -> int:
        """How many leftover `pending` rows `start()` marked `interrupted`."""
        return self._recovered

    @property
    def failed_writes(self) -> int:
        """Writes dropped after their retry failed too (for `doctor` and tests)."""
        return self._failed_writes

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
        """Block until everything queued before this call is committed (or dropped after a retry)."""
        if self._thread is None or not self._thread.is_alive():
            return False
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self) -> None:
        """Commit what is queued and stop the thread; later writes are logged and dropped."""
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
        finally:
            db.close()

    def _loop(self, db: Database) -> None:
        stopping = False
        while not stopping:
            batch: list[_Item] = [self._queue.get()]
            if isinstance(batch[0], _Write):
                # Group commit: a request usually queues pending, progress and final within a few ms; waiting
                # that long (without the GIL) turns three transactions into one, at no cost to durability
                # beyond these milliseconds.
                time.sleep(LINGER_SECONDS)
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            writes = _coalesce([item for item in batch if isinstance(item, _Write)])
            if writes:
                self._apply(db, writes)
            for item in batch:
                if isinstance(item, _Flush):
                    item.done.set()
                elif isinstance(item, _Stop):
                    stopping = True

    def _apply(self, db: Database, writes: list[_Write]) -> None:
        try:
            self._commit(db, writes)
        except Exception:
            logger.warning("ledger write of %d row(s) failed; retrying one by one", len(writes), exc_info=True)
            time.sleep(0.05)
            for write in writes:
                try:
                    self._commit(db, [write])
                except Exception:
                    self._failed_writes += 1
                    logger.exception(
                        "ledger %s write for request %s failed twice; dropped", write.kind, write.record.id
                    )

    def _commit(self, db: Database, writes: list[_Write]) -> None:
        # after _coalesce each request has one write, so grouping by kind cannot reorder a request's writes
        pending: list[tuple[Any, ...]] = []
        progress: list[tuple[Any, ...]] = []
        final: list[tuple[Any, ...]] = []
        for write in writes:
            values = record_to_values(write.record)
            if write.kind == "final":
                final.append(values)
            elif write.kind == "pending":
                pending.append(values)
            else:
                progress.append(tuple(values[index] for index in _PROGRESS_PICK))
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in ((_INSERT_PENDING, pending), (_UPDATE_PROGRESS, progress), (_UPSERT_FINAL, final)):
                if rows:
                    conn.executemany(sql, rows)
            conn.execute("COMMIT")
            self._commits += 1
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
