"""The `users` table in MySQL: the seed's schema plus created_at, behind a small repository.

Connections come from a DBUtils PooledDB of pymysql connections with bounded
connect/read/write timeouts. A connection that broke while idle (MySQL restarted,
a proxy cut it) is replaced transparently by DBUtils on its next use. When MySQL
stops answering, the call that finds out fails within the timeouts and later
calls fail at once, all with DatabaseUnavailable, until check() (run every few
seconds by the health monitor) reaches MySQL again: nothing is restarted.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from contextlib import contextmanager

import pymysql
from dbutils.pooled_db import PooledDB, PooledDBError
from pymysql.constants import ER

from video2mp3.core.errors import DependencyUnavailable, Reason
from video2mp3.core.settings import MysqlSettings

log = logging.getLogger(__name__)

# The seed's table (id, email UNIQUE, password), extended with created_at.
# `password` keeps its name for compatibility but holds an argon2id hash.
CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS users (
    id INT AUTO_INCREMENT PRIMARY KEY,
    email VARCHAR(255) UNIQUE NOT NULL,
    password VARCHAR(255) NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
# A table created by the seed's init.sql has no created_at yet.
ADD_CREATED_AT = (
    "ALTER TABLE users ADD COLUMN created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP"
)
MAX_EMAIL_LENGTH = 255

# Errors that mean the database or schema is gone rather than the statement being wrong.
_SCHEMA_GONE = {ER.BAD_DB_ERROR, ER.NO_SUCH_TABLE}
# Codes from 2000 up are the client's own (CR_*): can't connect, lost connection,
# server gone away. pymysql reports a connection it already closed as code 0.
_CLIENT_ERRORS = 2000


class DatabaseUnavailable(DependencyUnavailable):
    """MySQL cannot be reached (or the schema is not in place yet); worth retrying.
    An RPC that raises it ends UNAVAILABLE with this message (core/errors.py)."""
    message = "user database unavailable, try again"
    reason = Reason.USER_DATABASE_UNAVAILABLE


class EmailTaken(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class User:
    id: int
    email: str
    password_hash: str
    created_at: dt.datetime  # UTC, timezone-aware


class UserRepository:
    def __init__(self, cfg: MysqlSettings, extra_tables: tuple[str, ...] = (), owned_tables: tuple[str, ...] = ()):
        """`extra_tables`: CREATE TABLE IF NOT EXISTS statements of other modules
        (auth/tables.py lists them), created with the users table. `owned_tables`:
        tables with a user_id column whose rows are deleted with their user
        (API keys, sessions), before the user row."""
        self._cfg = cfg
        self._extra_tables = extra_tables
        self._owned_tables = owned_tables
        self._connect_args = dict(
            host=cfg.host,
            port=cfg.port,
            user=cfg.user,
            password=cfg.password,
            charset="utf8mb4",
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            write_timeout=cfg.write_timeout,
            autocommit=True,
            # TIMESTAMP columns come back in the session time zone: make it UTC.
            init_command="SET time_zone = '+00:00'",
        )
        # mincached=0: nothing connects here, so start-up survives a MySQL outage.
        # ping=0: no extra round trip per checkout (DBUtils pings while holding the
        # pool lock); a dead connection is instead replaced by DBUtils' failover,
        # which reopens it and retries the statement once.
        # isfatal: a statement that timed out is not retried on a new connection
        # (the server is hung: the retry would wait out the timeout again).
        # reset=False: autocommit, so there is never a transaction to roll back.
        self._pool = PooledDB(
            creator=pymysql,
            mincached=0,
            maxcached=cfg.pool_size,
            maxconnections=cfg.pool_size,
            blocking=True,
            ping=0,
            isfatal=_worth_a_new_connection,
            reset=False,
            database=cfg.db,
            **self._connect_args,
        )
        self._schema_ready = threading.Event()
        # Cleared when MySQL stops answering, set again by the next successful
        # check(): while it is clear, calls fail at once instead of each waiting
        # out the timeouts (DBUtils opens new connections under its pool lock,
        # so against a hung server they would also queue behind one another).
        self._reachable = threading.Event()

    @property
    def schema_ready(self) -> bool:
        return self._schema_ready.is_set()

    @property
    def available(self) -> bool:
        """False while calls would fail at once (schema missing, MySQL unreachable)."""
        return self._schema_ready.is_set() and self._reachable.is_set()

    # -- schema and health ---------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the database and the users table if absent (idempotent)."""
        try:
            con = pymysql.connect(**self._connect_args)
        except pymysql.MySQLError as e:
            raise DatabaseUnavailable(f"{self._where()}: {_describe(e)}") from e
        try:
            with con.cursor() as cur:
                cur.execute(
                    f"CREATE DATABASE IF NOT EXISTS {_quote_ident(self._cfg.db)} "
                    "CHARACTER SET utf8mb4"
                )
                cur.execute(f"USE {_quote_ident(self._cfg.db)}")
                cur.execute(CREATE_TABLE)
                for ddl in self._extra_tables:
                    cur.execute(ddl)
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
                    " AND TABLE_NAME = 'users' AND COLUMN_NAME = 'created_at'",
                    (self._cfg.db,),
                )
                if cur.fetchone()[0] == 0:
                    log.info("adding created_at to the existing users table")
                    cur.execute(ADD_CREATED_AT)
        except pymysql.MySQLError as e:
            raise DatabaseUnavailable(f"{self._where()}: {_describe(e)}") from e
        finally:
            con.close()
        if not self.schema_ready:
            log.info("users table ready in %s", self._cfg.db)
        self._schema_ready.set()

    def check(self) -> None:
        """Raise DatabaseUnavailable unless MySQL answers and the schema exists.
        Called every few seconds by the health monitor, which also makes it
        the retry loop for creating the schema after a failed start."""
        if not self.schema_ready:
            self.ensure_schema()
        with self._cursor(probe=True) as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        if not self._reachable.is_set():
            # Back from an outage: the idle pooled connections died with it;
            # drop them so the next calls open fresh ones (the pool stays usable).
            self._pool.close()
            self._reachable.set()

    def close(self) -> None:
        self._pool.close()

    # -- users ----------------------------------------------------------------

    def create(self, email: str, password_hash: str) -> User:
        with self._cursor() as cur:
            try:
                cur.execute(
                    "INSERT INTO users (email, password) VALUES (%s, %s)", (email, password_hash)
                )
            except pymysql.IntegrityError as e:
                if e.args and e.args[0] == ER.DUP_ENTRY:
                    raise EmailTaken(email) from None
                raise
            user_id = cur.lastrowid
            cur.execute(
                "SELECT id, email, password, created_at FROM users WHERE id = %s", (user_id,)
            )
            return _user(cur.fetchone())

    def by_email(self, email: str) -> User | None:
        with self._cursor() as cur:
            cur.execute(
                "SELECT id, email, password, created_at FROM users WHERE email = %s", (email,)
            )
            row = cur.fetchone()
        return _user(row) if row else None

    def by_id(self, user_id: int) -> User | None:
        with self._cursor() as cur:
            cur.execute(
                "SELECT id, email, password, created_at FROM users WHERE id = %s", (user_id,)
            )
            row = cur.fetchone()
        return _user(row) if row else None

    def update_password_hash(self, user_id: int, password_hash: str) -> None:
        with self._cursor() as cur:
            cur.execute("UPDATE users SET password = %s WHERE id = %s", (password_hash, user_id))

    def delete(self, user_id: int) -> bool:
        """True if the user existed. What the user owns (owned_tables) goes first, in
        the same transaction."""
        with self._cursor(transaction=True) as cur:
            for table in self._owned_tables:
                cur.execute(f"DELETE FROM {_quote_ident(table)} WHERE user_id = %s", (user_id,))
            return cur.execute("DELETE FROM users WHERE id = %s", (user_id,)) > 0

    def all(self) -> list[User]:
        with self._cursor() as cur:
            cur.execute("SELECT id, email, password, created_at FROM users ORDER BY id")
            return [_user(row) for row in cur.fetchall()]

    def cursor(self, transaction: bool = False):
        """A cursor with this repository's error handling, for the other auth tables.
        transaction=True: its statements commit together at the end of the block,
        or roll back if it raises (SELECT ... FOR UPDATE locks until then)."""
        return self._cursor(transaction=transaction)

    # -- plumbing -------------------------------------------------------------

    @contextmanager
    def _cursor(self, probe: bool = False, transaction: bool = False):
        """A cursor on a pooled connection; connection-level failures become
        DatabaseUnavailable, everything else propagates unchanged. In a
        transaction, DBUtils never silently reconnects (it would lose the
        transaction): a broken connection fails the block."""
        if not self.schema_ready:
            raise DatabaseUnavailable("users table not created yet")
        if not probe and not self._reachable.is_set():
            raise DatabaseUnavailable(f"{self._where()} unreachable at the last check")
        con = None
        try:
            con = self._pool.connection()
            with _statements(con, transaction) as cur:
                yield cur
        except (pymysql.OperationalError, pymysql.InterfaceError, PooledDBError) as e:
            raise self._unavailable(e) from e
        except pymysql.ProgrammingError as e:
            if e.args and e.args[0] in _SCHEMA_GONE:
                self._schema_gone(e)
                raise DatabaseUnavailable(_describe(e)) from e
            raise
        finally:
            if con is not None:
                con.close()  # back to the pool

    def _unavailable(self, e: Exception) -> DatabaseUnavailable:
        """What a connection-level failure means: the schema is gone, or MySQL is unreachable."""
        code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
        if code in _SCHEMA_GONE:
            self._schema_gone(e)
        elif code == 0 or code >= _CLIENT_ERRORS:
            # The connection itself failed (not a statement): MySQL is unreachable.
            if self._reachable.is_set():
                log.warning("%s: %s; failing calls until it answers again", self._where(), _describe(e))
            self._reachable.clear()
        return DatabaseUnavailable(f"{self._where()}: {_describe(e)}")

    def _where(self) -> str:
        return f"MySQL at {self._cfg.host}:{self._cfg.port}"

    def _schema_gone(self, e: Exception) -> None:
        # Someone dropped the database or table: let the monitor recreate it.
        log.warning("users table missing (%s); will recreate it", _describe(e))
        self._schema_ready.clear()


@contextmanager
def _statements(con, transaction: bool):
    """A cursor of `con`; in a transaction, committed at the end of the block, rolled back if it raises."""
    if transaction:
        con.begin()
    cur = con.cursor()
    try:
        yield cur
        if transaction:
            con.commit()
    except BaseException:
        if transaction:
            _rollback(con)
        raise
    finally:
        cur.close()


def _rollback(con) -> None:
    try:
        con.rollback()
    except (pymysql.MySQLError, PooledDBError) as e:  # the connection is broken: nothing to keep
        log.debug("rollback failed: %s", e)


def _worth_a_new_connection(e: Exception) -> bool:
    # pymysql raises "Lost connection ... (timed out)" from the socket's TimeoutError.
    return not isinstance(e.__context__, TimeoutError)


def _user(row) -> User:
    user_id, email, password_hash, created_at = row
    return User(
        id=int(user_id),
        email=email,
        password_hash=password_hash,
        created_at=created_at.replace(tzinfo=dt.UTC),
    )


def _quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _describe(e: Exception) -> str:
    if isinstance(e, pymysql.MySQLError) and len(e.args) >= 2 and e.args[1]:
        return f"error {e.args[0]}: {e.args[1]}"
    if isinstance(e, pymysql.InterfaceError):
        return "connection closed"
    return str(e) or type(e).__name__
