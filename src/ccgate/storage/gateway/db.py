"""The gateway's database seam: one small async interface over SQLite and PostgreSQL.

Contract (what the store relies on, whichever backend):

* SQL is written once with ``?`` placeholders; the PostgreSQL backend rewrites them to ``$1, $2, ...``.
  Values are ``int``, ``float``, ``str``, ``None`` (timestamps are fixed-width ISO-8601 UTC text, money integer
  nano-dollars, JSON text), so both drivers bind them the same way.
* ``fetch``/``execute`` outside a transaction run in autocommit.
* ``transaction()`` yields a `Connection` holding a write transaction: on SQLite ``BEGIN IMMEDIATE`` (the
  database's one write lock, taken before anything is read, so read-then-write is serialised across
  processes); on PostgreSQL READ COMMITTED, where the caller takes row locks with ``FOR UPDATE`` (see
  `for_update`) in one fixed order. Leaving the block commits; an exception rolls back.
* ``lock_migrations(conn)`` serialises schema changes inside a transaction (advisory lock / the write lock).
* Hot paths that need several statements in one transaction use one round trip each: on SQLite
  ``SQLiteDatabase.run_transaction(job)`` runs a whole synchronous job inside ``BEGIN IMMEDIATE`` as ONE job (on
  the database thread, or with ``inline`` on the event loop's own connection; never one hop per statement); on
  PostgreSQL a server-side function (a migration creates it) does the work in one call. ``one_trip(body)`` runs
  an async transaction body written once for both: on SQLite the whole body is one such job (its awaits on the
  connection never suspend), on PostgreSQL it is an ordinary transaction.
* A migration statement preceded by the comment line ``-- ccgate: postgresql only`` (or ``sqlite only``) runs
  only on that backend: a PL/pgSQL function has no SQLite counterpart. ``$$``-quoted bodies stay one statement.
* Nothing blocks the event loop on disk or on another process: sqlite3 runs in one dedicated thread per
  `Database`, except the short hot transactions (an admission, a settle, a ledger batch) that run on the loop's
  own connection when SQLite's write lock is free -- a commit there writes the WAL without an fsync, and
  checkpoints (which sync) run on the thread (`SQLiteDatabase.run_transaction`). asyncpg is async.

asyncpg is the PostgreSQL driver's one home module here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import Executor, Future
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from ccgate.errors import CcgateError, UserInputError

if TYPE_CHECKING:
    import asyncpg

Row = tuple[Any, ...]
Params = Sequence[Any]
T = TypeVar("T")

# Seconds a SQLite connection waits for another writer's lock (another instance or process on the same file).
SQLITE_BUSY_TIMEOUT_S = 30.0
# Admissions the SQLite thread runs in a row ahead of a waiting settle or ledger write (then that one goes).
URGENT_RUN = 8
# Times an inline transaction waits for a job on the database thread to release SQLite's write lock and tries
# again on the event loop, before it queues on the thread itself.
INLINE_TRIES = 20
# Transactions committed on the event loop's SQLite connection between two checkpoints (`_checkpoint`).
INLINE_CHECKPOINT_EVERY = 100
# Of those checkpoints, every this many is a RESTART with the connection held (the others are PASSIVE).
RESTART_EVERY = 8
_log = logging.getLogger("ccgate.gateway")
# An arbitrary constant: the PostgreSQL advisory lock that serialises migrations between instances.
MIGRATION_LOCK_KEY = 0x63636761_7465  # "ccgate"


class DatabaseUnavailableError(CcgateError):
    """The gateway's database cannot be reached or refused a statement; the data plane fails closed (503)."""

    status = 503
    error_type = "overloaded_error"


class ConstraintError(CcgateError):
    """A write broke a unique or foreign-key constraint (a duplicate name, an unknown team); nothing was stored."""

    status = 409
    error_type = "invalid_request_error"
    should_retry = False


class Connection(Protocol):
    """One connection inside a transaction (or in autocommit, for `Database` itself)."""

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None: ...


class SyncConnection(Protocol):
    """`Connection` for a job that runs whole on the SQLite thread (`SQLiteDatabase.run_transaction`)."""

    def fetch(self, sql: str, params: Params = ()) -> list[Row]: ...

    def execute(self, sql: str, params: Params = ()) -> int: ...

    def executemany(self, sql: str, rows: Sequence[Params]) -> None: ...


class Database(Connection, Protocol):
    """A pool (PostgreSQL) or a dedicated thread with one connection (SQLite)."""

    backend: str  # "sqlite" or "postgresql"

    @property
    def for_update(self) -> str:
        """`` FOR UPDATE`` on PostgreSQL, empty on SQLite (where BEGIN IMMEDIATE already holds the lock)."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """``async with db.transaction() as conn:`` -- see the module docstring."""
        ...

    async def lock_migrations(self, conn: Connection) -> None: ...

    async def run_script(self, conn: Connection, script: str) -> None:
        """Run a multi-statement SQL file inside the caller's transaction."""
        ...

    async def one_trip(self, body: Callable[[Connection], Coroutine[Any, Any, T]], *, inline: bool = False) -> T:
        """`body` in one write transaction, one hop to the database where the backend allows it: on SQLite the
        body runs whole as one job (on the event loop's connection with `inline`, see
        `SQLiteDatabase.run_transaction`), so it must await nothing but `conn` (anything else raises)."""
        ...

    async def close(self) -> None: ...


@functools.lru_cache(maxsize=1024)
def to_numbered(sql: str) -> str:
    """``?`` placeholders -> ``$1, $2, ...``, leaving string literals and quoted names alone."""
    out: list[str] = []
    number = 0
    quote: str | None = None
    for char in sql:
        if quote is not None:
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            number += 1
            out.append(f"${number}")
            continue
        out.append(char)
    return "".join(out)


def split_script(script: str) -> list[str]:
    """A SQL file's statements, split where SQLite says a statement is complete (quotes and comments respected)."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.splitlines(keepends=True):
        current.append(line)
        text = "".join(current)
        # a `$$ ... $$` body (a PL/pgSQL function) holds semicolons of its own: complete once the quote closes
        if sqlite3.complete_statement(text) and text.count("$$") % 2 == 0:
            if text.strip().strip(";").strip() and not _only_comments(text):
                statements.append(text)
            current = []
    rest = "".join(current)
    if rest.strip() and not _only_comments(rest):
        statements.append(rest)
    return statements


BACKEND_MARK = "-- ccgate: "


def for_backend(statements: Sequence[str], backend: str) -> list[str]:
    """The statements that run on `backend`: one whose leading comments say ``-- ccgate: OTHER only`` is left out."""
    kept: list[str] = []
    for statement in statements:
        marks = [
            line.strip()[len(BACKEND_MARK) :].strip()
            for line in statement.splitlines()
            if line.strip().startswith(BACKEND_MARK)
        ]
        only = [mark.removesuffix(" only").strip() for mark in marks if mark.endswith(" only")]
        if not only or backend in only:
            kept.append(statement)
    return kept


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") or line.strip() == ";" for line in text.splitlines())


# --- SQLite -----------------------------------------------------------------------------------------------------


class DatabaseThread(Executor):
    """The one thread that owns a SQLite connection; it runs jobs one at a time, taking them from two queues:
    an urgent job (a request's admission, which its reply waits for) before ordinary ones (settles and ledger
    writes, which run after replies). Ordinary jobs are delayed, never starved: after `URGENT_RUN` urgent jobs in
    a row, a waiting ordinary one goes next. Within a queue, first come first served.

    The order is kept here, on the thread, rather than by an asyncio lock held across each job: handing such a
    lock on needs the event loop to notice that the previous job finished, and under load that wait (a turn of a
    busy loop, milliseconds) left the database thread idle between jobs and capped the gateway at a few hundred
    jobs a second."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._wake = threading.Condition()
        self._urgent: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._ordinary: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._run = 0  # urgent jobs since an ordinary one last ran
        self._closed = False
        self._thread: threading.Thread | None = None
        self.running: Future[Any] | None = None  # the job on the thread now (read from the event loop)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """An ordinary job."""
        return self._put(functools.partial(fn, *args, **kwargs), urgent=False)

    def submit_urgent(self, fn: Callable[[], T]) -> Future[T]:
        return self._put(fn, urgent=True)

    def _put(self, job: Callable[[], T], *, urgent: bool) -> Future[T]:
        future: Future[T] = Future()
        with self._wake:
            if self._closed:
                raise RuntimeError("the database thread is shut down")
            (self._urgent if urgent else self._ordinary).append((future, job))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()
        return future

    def _next(self) -> tuple[Future[Any], Callable[[], Any]] | None:
        """The job to run next (None: shut down and nothing left); called with `_wake` held."""
        while not (self._urgent or self._ordinary):
            if self._closed:
                return None
            self._wake.wait()
        if self._urgent and (self._run < URGENT_RUN or not self._ordinary):
            self._run += 1
            return self._urgent.popleft()
        self._run = 0
        return self._ordinary.popleft()

    def _work(self) -> None:
        while True:
            with self._wake:
                picked = self._next()
            if picked is None:
                return
            future, job = picked
            if not future.set_running_or_notify_cancel():
                continue
            self.running = future
            try:
                result = job()
            except BaseException as error:  # handed to the caller, whatever it is
                self.running = None
                future.set_exception(error)
            else:
                self.running = None
                future.set_result(result)
            del future, job, picked

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Jobs already queued still run (a COMMIT or a connection's close among them)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()


class SQLiteDatabase:
    """sqlite3 in WAL mode on one dedicated thread (`DatabaseThread`), which runs one job at a time.

    A job is one statement or one whole transaction (`run_transaction`, `one_trip`), so jobs never interleave
    inside a transaction. `transaction()` spans several jobs: while one is open, new jobs wait on the event loop
    until it ends (`_gate`), and it begins only after every job queued before it.

    Two `SQLiteDatabase` objects on one file behave like two instances: their BEGIN IMMEDIATE transactions
    serialise on SQLite's write lock (waiting in their own threads, never on the event loop).
    """

    backend = "sqlite"
    for_update = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = DatabaseThread("ccgate-gateway-db")
        self._conn: sqlite3.Connection | None = None
        self._holder = asyncio.Lock()  # one multi-job transaction (or the close) at a time
        self._free: asyncio.Future[None] | None = None  # while one is open: done when it ends
        self._inline: sqlite3.Connection | None = None  # the event loop's own connection (`run_transaction`)
        self._inline_commits = 0
        self._group: _Group | None = None  # the inline transaction jobs of this turn of the loop join
        self._checkpointing: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._call(self._open)
        # never waits for the write lock (busy: the job goes to the thread) and never checkpoints (an fsync)
        inline = self._connect(timeout=0.0)
        inline.execute("PRAGMA wal_autocheckpoint=0")
        self._inline = inline

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect(timeout=SQLITE_BUSY_TIMEOUT_S)
        conn.execute("PRAGMA journal_mode=WAL")
        self._conn = conn

    def _connect(self, *, timeout: float) -> sqlite3.Connection:
        """A connection with what every one of ours needs set: synchronous and foreign keys are per connection
        (an inline connection left at the default FULL would fsync every commit on the event loop)."""
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=timeout, check_same_thread=True)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    async def _call(self, function: Callable[[], T], *, urgent: bool = False) -> T:
        """Run on the database thread. Shielded: a job once submitted runs even if its caller is cancelled, so
        the connection's state never depends on where a cancellation landed (a COMMIT cancelled before it
        started would otherwise leave the transaction open for the next caller)."""
        try:
            submitted = self._executor.submit_urgent(function) if urgent else self._executor.submit(function)
        except RuntimeError as error:  # the thread is shut down: the database was closed
            raise DatabaseUnavailableError("the gateway database is closed") from error
        future = asyncio.wrap_future(submitted)
        future.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(future)
        except (sqlite3.Error, OSError) as error:
            raise self._translated(error) from error

    def _translated(self, error: sqlite3.Error | OSError) -> CcgateError:
        if isinstance(error, sqlite3.IntegrityError):
            return ConstraintError(f"refused by the database: {error}")
        if isinstance(error, OSError):  # its folder cannot be made (read-only, a file in the way, no such mount)
            return DatabaseUnavailableError(
                f"cannot open the gateway database {self.path}: {error.strerror or error}",
                hint="give --db a sqlite:/// path in a folder you can write to",
            )
        return DatabaseUnavailableError(
            f"the gateway database failed: {error}", hint="check the --db file, its disk and its permissions"
        )

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DatabaseUnavailableError("the gateway database is closed")
        return self._conn

    async def _gate(self) -> None:
        """Wait while a multi-job transaction is open. The caller submits its job right after, with no await in
        between, so nothing lands inside that transaction."""
        while self._free is not None:
            await asyncio.shield(self._free)

    @asynccontextmanager
    async def _exclusively(self) -> AsyncIterator[None]:
        """Hold the connection across several jobs: later jobs wait in `_gate` until the block ends."""
        async with self._holder:
            self._free = asyncio.get_running_loop().create_future()
            try:
                yield
            finally:
                free, self._free = self._free, None
                free.set_result(None)

    # raw calls, run on the database thread; the caller has passed `_gate` or holds the connection
    async def _fetch(self, sql: str, params: Params) -> list[Row]:
        return await self._call(lambda: self._c().execute(sql, tuple(params)).fetchall())

    async def _execute(self, sql: str, params: Params) -> int:
        return await self._call(lambda: self._c().execute(sql, tuple(params)).rowcount)

    async def _executemany(self, sql: str, rows: Sequence[Params]) -> None:
        await self._call(lambda: self._c().executemany(sql, [tuple(r) for r in rows]))

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        await self._gate()
        return await self._fetch(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = ()) -> int:
        await self._gate()
        return await self._execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        await self.run_transaction(lambda conn: conn.executemany(sql, rows))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._exclusively(), _SQLiteTransaction(self) as conn:
            yield conn

    async def lock_migrations(self, conn: Connection) -> None:
        """BEGIN IMMEDIATE already holds SQLite's single write lock."""

    async def run_script(self, conn: Connection, script: str) -> None:
        for statement in for_backend(split_script(script), self.backend):
            await conn.execute(statement)

    async def run_transaction(
        self, job: Callable[[SyncConnection], T], *, urgent: bool = False, inline: bool = False
    ) -> T:
        """`job` inside BEGIN IMMEDIATE ... COMMIT as one job on the database thread: one hop, however many
        statements (an exception rolls back). The job must not block on anything but the database. An `urgent`
        job (an admission: a request waits for it) goes ahead of queued ordinary ones (see `DatabaseThread`).

        An `inline` job (a few statements on small, hot tables: an admission, a settle, a ledger batch) runs
        right here on the event loop when SQLite's write lock is free, and goes to the thread only when another
        process holds it. The inline jobs of one turn of the loop share one transaction (`_begin_group`); its
        COMMIT writes to the WAL without an fsync (synchronous=NORMAL; checkpoints run on the thread), so a job
        costs ~0.1 ms of CPU -- less than handing it to the thread, where every statement passed the GIL back and
        forth with the busy event loop (that ping-pong cost more CPU than the statements)."""
        for _ in range(INLINE_TRIES if inline else 0):
            if self._free is not None or self._inline is None:
                break
            group = self._group or self._begin_group()
            if group is not None:
                result = self._in_group(group, job)
                await asyncio.shield(group.committed)
                return result
            # the lock is taken: by a job on our own thread (wait for it, then try again here; queueing behind
            # it would put this job on the thread too, where it holds the lock longer and makes others queue),
            # or by another process (the thread waits for that, with SQLite's busy timeout)
            running = self._executor.running
            if running is None:
                break
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wrap_future(running))
        await self._gate()
        return await self._call(lambda: self._transact(job), urgent=urgent)

    def _begin_group(self) -> _Group | None:
        """Open a write transaction on the loop's connection that every inline job of this turn of the event loop
        joins, committed once at its end (None: the write lock is taken). One commit for many jobs writes each
        page they share to the WAL once: under load an admission, a settle and a ledger batch each wrote ~15
        pages (~30 write calls) of their own."""
        conn = self._inline
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return None
            raise self._translated(error) from error
        loop = asyncio.get_running_loop()
        group = self._group = _Group(loop.create_future())
        group.committed.add_done_callback(_retrieve)
        loop.call_soon(self._commit_group, group)
        return group

    def _in_group(self, group: _Group, job: Callable[[SyncConnection], T]) -> T:
        """`job` inside the open group, behind a savepoint: a job that fails is undone alone. Its result is
        returned to its caller only once the group has committed (`run_transaction` awaits that)."""
        conn = self._inline
        assert conn is not None
        conn.execute("SAVEPOINT job")
        try:
            result = job(_SyncSQLite(conn))
        except BaseException as error:
            try:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
            except sqlite3.Error as undo:  # the error ended the whole transaction (a full disk can): all of it
                group.failed = self._translated(undo)
            if isinstance(error, sqlite3.Error | OSError):
                raise self._translated(error) from error
            raise
        conn.execute("RELEASE job")
        return result

    def _commit_group(self, group: _Group) -> None:
        self._group = None
        conn = self._inline
        try:
            if conn is None:
                raise DatabaseUnavailableError("the gateway database is closed")
            if group.failed is not None:
                raise group.failed
            conn.execute("COMMIT")
        except (CcgateError, sqlite3.Error, OSError) as error:
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            group.committed.set_exception(error if isinstance(error, CcgateError) else self._translated(error))
            return
        group.committed.set_result(None)
        self._inline_commits += 1
        if self._inline_commits % INLINE_CHECKPOINT_EVERY == 0 and self._checkpointing is None:
            restart = self._inline_commits % (INLINE_CHECKPOINT_EVERY * RESTART_EVERY) == 0
            self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint(restart=restart))

    async def _checkpoint(self, *, restart: bool) -> None:
        """Copy the WAL into the database file on the thread (it syncs: never on the event loop).

        Mostly PASSIVE, beside the inline commits that go on meanwhile: nobody waits for it. Such a checkpoint
        never catches up with a log that keeps growing, though, and the log restarts from its beginning only
        after one that did (the WAL file grew by hundreds of MB a minute under load). So every `RESTART_EVERY`th
        is a RESTART with the connection held, no inline commit landing meanwhile: requests that need the
        database wait for it, the event loop does not, and the passive ones before it left it little to copy."""
        sql = "PRAGMA wal_checkpoint(RESTART)" if restart else "PRAGMA wal_checkpoint(PASSIVE)"
        try:
            async with self._exclusively() if restart else contextlib.nullcontext():
                # read to the end: a statement left with a row to give keeps a read lock, and the log cannot restart
                await self._call(lambda: self._c().execute(sql).fetchall())
        except CcgateError as error:  # the next one tries again; a log that grows meanwhile is no harm
            _log.warning("checkpointing the gateway database failed: %s", error.message)
        finally:
            self._checkpointing = None

    async def one_trip(self, body: Callable[[Connection], Coroutine[Any, Any, T]], *, inline: bool = False) -> T:
        return await self.run_transaction(lambda conn: _drive(body(_AsyncOverSync(conn))), inline=inline)

    def _transact(self, job: Callable[[SyncConnection], T]) -> T:
        conn = self._c()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = job(_SyncSQLite(conn))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    async def close(self) -> None:
        if self._group is not None:
            with contextlib.suppress(CcgateError):
                await asyncio.shield(self._group.committed)
        if self._checkpointing is not None:
            await self._checkpointing
        async with self._exclusively():
            if self._inline is not None:
                inline, self._inline = self._inline, None
                inline.close()
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await self._call(conn.close)
        self._executor.shutdown(wait=False)


@dataclass(slots=True)
class _Group:
    """The inline jobs of one turn of the event loop, sharing one transaction (`SQLiteDatabase._begin_group`)."""

    committed: asyncio.Future[None]
    failed: CcgateError | None = None


class _SyncSQLite:
    """The `SyncConnection` a `run_transaction` job gets (on the database thread or inline, inside the
    transaction)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    def execute(self, sql: str, params: Params = ()) -> int:
        return self.conn.execute(sql, tuple(params)).rowcount

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if rows:
            self.conn.executemany(sql, [tuple(r) for r in rows])


class _AsyncOverSync:
    """The `Connection` a `one_trip` body gets on SQLite: each call runs at once on the job's connection, so the
    body's awaits on it complete without suspending."""

    __slots__ = ("sync",)

    def __init__(self, sync: SyncConnection) -> None:
        self.sync = sync

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return self.sync.fetch(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = self.sync.fetch(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = ()) -> int:
        return self.sync.execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self.sync.executemany(sql, rows)


def _drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, right here (on the database thread, or inline on the
    event loop's thread without yielding to the loop)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a one-trip transaction body awaited something other than its connection")


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shielded job's exception as seen when its caller was cancelled and will never look at it."""
    if not future.cancelled():
        future.exception()


class _SQLiteTransaction:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK on the database thread; the owner's lock is already held."""

    def __init__(self, db: SQLiteDatabase) -> None:
        self.db = db

    async def __aenter__(self) -> _SQLiteTransaction:
        try:
            await self.db._execute("BEGIN IMMEDIATE", ())
        except BaseException:
            # cancelled while BEGIN ran on the thread: it may still take the lock; the rollback queued behind it
            # on the same thread ends it, so the next transaction does not find one open
            await self.db._call(self._rollback)
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            try:
                await self.db._execute("COMMIT", ())
            except BaseException:
                # a COMMIT that failed (SQLITE_BUSY, a full disk) leaves the transaction open: end it
                await self.db._call(self._rollback)
                raise
        else:
            await self.db._call(self._rollback)

    def _rollback(self) -> None:
        conn = self.db._c()
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return await self.db._fetch(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.db._fetch(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self.db._execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        await self.db._executemany(sql, rows)


# --- PostgreSQL -------------------------------------------------------------------------------------------------


def _status_count(status: str) -> int:
    """asyncpg's command tag (``UPDATE 3``, ``INSERT 0 1``) -> rows changed."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


@asynccontextmanager
async def _pg_errors() -> AsyncIterator[None]:
    """asyncpg's exceptions -> ours: constraint violations, and a lost or unreachable server (fail closed)."""
    import asyncpg

    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as error:
        raise ConstraintError(f"refused by the database: {error.__class__.__name__}: {error}") from error
    except asyncpg.exceptions.TransactionRollbackError as error:  # a deadlock or serialisation failure
        raise DatabaseUnavailableError(
            f"the gateway database rolled back a transaction: {type(error).__name__}", hint="try again"
        ) from error
    except (
        TimeoutError,
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,
        asyncpg.exceptions.InsufficientResourcesError,
    ) as error:
        raise DatabaseUnavailableError(
            f"lost the gateway's PostgreSQL: {type(error).__name__}", hint="check that the database server runs"
        ) from error


class _PGConnection:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        async with _pg_errors():
            return [tuple(r) for r in await self.conn.fetch(to_numbered(sql), *params)]

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with _pg_errors():
            row = await self.conn.fetchrow(to_numbered(sql), *params)
        return None if row is None else tuple(row)

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with _pg_errors():
            return _status_count(await self.conn.execute(to_numbered(sql), *params))

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if rows:
            async with _pg_errors():
                await self.conn.executemany(to_numbered(sql), [tuple(r) for r in rows])


async def _no_reset(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, minus asyncpg's default reset query (``SELECT pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL``), which costs a round trip on every release, i.e. on every statement
    outside a transaction. The store keeps no session state (no SET, LISTEN, cursor or session advisory lock;
    the migration lock is transaction-scoped); asyncpg still rolls back a transaction left open."""


class PostgresDatabase:
    """An asyncpg pool; each `transaction()` holds one pooled connection for its duration. Nothing in the
    store may leave session state on a connection (see `_no_reset`)."""

    backend = "postgresql"
    for_update = " FOR UPDATE"

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            import asyncpg
        except ImportError:
            raise UserInputError(
                "a postgresql:// database needs the asyncpg driver, which is not installed",
                hint="pip install 'ccgate[postgres]' (or use the SQLite default)",
            ) from None

        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=self._min_size, max_size=self._max_size, command_timeout=60, reset=_no_reset
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as error:
            raise DatabaseUnavailableError(
                f"cannot reach the gateway's PostgreSQL: {type(error).__name__}",
                hint="check that the server runs and that the --db URL (host, port, user, database) is right",
            ) from error

    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseUnavailableError("the gateway database is closed")
        return self._pool

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[_PGConnection]:
        async with _pg_errors(), self._p().acquire() as conn:
            yield _PGConnection(conn)

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._acquire() as conn:
            return await conn.fetch(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._acquire() as conn:
            return await conn.fetchone(sql, params)

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._acquire() as conn:
            return await conn.execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with _pg_errors(), self._p().acquire() as conn, conn.transaction():
            yield _PGConnection(conn)

    async def one_trip(self, body: Callable[[Connection], Coroutine[Any, Any, T]], *, inline: bool = False) -> T:
        async with self.transaction() as conn:
            return await body(conn)

    async def lock_migrations(self, conn: Connection) -> None:
        await conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")

    async def run_script(self, conn: Connection, script: str) -> None:
        for statement in for_backend(split_script(script), self.backend):
            await conn.execute(statement)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


def describe_url(url: str) -> str:
    """The URL without credentials, for messages and logs."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def connect(url: str, *, min_size: int = 1, max_size: int = 10) -> SQLiteDatabase | PostgresDatabase:
    """Open ``sqlite:///PATH`` or ``postgresql://...`` (``postgres://`` too)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        raw = unquote(url[len("sqlite://") :])
        if not raw.startswith("/") or raw == "/":
            raise UserInputError(
                f"{url!r} is not a SQLite URL with a file path", hint="use sqlite:///absolute/path/to/gateway.db"
            )
        sqlite_db = SQLiteDatabase(Path(raw))
        try:
            await sqlite_db.open()
        except BaseException:
            await sqlite_db.close()
            raise
        return sqlite_db
    if parts.scheme in ("postgresql", "postgres"):
        pg_db = PostgresDatabase(url, min_size=min_size, max_size=max_size)
        await pg_db.open()
        return pg_db
    raise UserInputError(
        f"unsupported database URL {describe_url(url)!r}", hint="use sqlite:///PATH or postgresql://USER@HOST/DB"
    )
