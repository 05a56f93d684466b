"""The URS database: sessions by (domain, id) and the designated-MSD soft state (SQLAlchemy 2).

SQLite in WAL mode is the embedded default; any SQLAlchemy async URL works
(`postgresql+asyncpg://...`). The store never reads a clock: every operation is told
`now` (Unix seconds), so expiry is testable with a fake clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from msd.database import DatabaseError, open_database
from msd.migrate import Schema
from msd.schema import Session, SessionRecord
from msd.writebatch import WriteBatcher, batcher_for
from urs.errors import (
    IdTakenError,
    SessionNotFoundError,
    StoreError,
    TermConflictError,
    TokenRejectedError,
)

# A keyword the stored JSON writes as itself between quotes (no escapes): only those can
# narrow a search in SQL; any other keyword makes the search read every unexpired row.
_PLAIN_KEYWORD = re.compile(r'[^"\\\x00-\x1f\x7f]+')
MEMBERS_MAX = 64  # MSD daemons listed per domain (entries expire; listing is bounded)

metadata = MetaData()

sessions = Table(
    "sessions",
    metadata,
    Column("domain", String(253), primary_key=True),
    Column("id", String(63), primary_key=True),
    Column("body", Text, nullable=False),  # the validated Session as JSON
    # sha256 hex of the owner token: a stolen database file cannot be used to update.
    Column("token_sha256", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)

designated = Table(
    "designated",
    metadata,
    Column("domain", String(253), primary_key=True),
    Column("address", String(45), nullable=False),
    Column("port", Integer, nullable=False),
    Column("term", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)


# Every MSD daemon of a domain refreshes its entry here (soft state), so `mdns status`
# can list designated and backup daemons alike.
msd_members = Table(
    "msd_members",
    metadata,
    Column("domain", String(253), primary_key=True),
    Column("msd_id", String(64), primary_key=True),
    Column("address", String(45), nullable=False),
    Column("port", Integer, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("expires_at", Float, nullable=False),
)


# Made by the Alembic revisions in urs/migrations/versions/ (docs/deploy.md, "Upgrades").
SCHEMA = Schema(name="urs", metadata=metadata, migrations=Path(__file__).with_name("migrations"),
                baseline="0001", marker_table="sessions", head="0001")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Member:
    """One MSD daemon of a domain as it last reported itself."""

    msd_id: str
    address: str
    port: int
    pid: int
    role: str
    expires_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.msd_id, "address": f"{self.address}:{self.port}", "pid": self.pid,
                "role": self.role, "expires_at": self.expires_at}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Designated:
    """A domain's designated MSD as it last announced itself (soft state: it expires)."""

    address: str
    port: int
    term: int
    expires_at: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def hash_token(token: str) -> str:
    """The stored form of an owner token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def session_uri(domain: str, session_id: str) -> str:
    """The public name of a session: `mcast.<domain>/<id>`."""
    return f"mcast.{domain}/{session_id}"


class SessionStore:
    """Sessions and soft state behind one SQLAlchemy async engine."""

    def __init__(self, engine: AsyncEngine, *, writes: WriteBatcher | None = None) -> None:
        self._engine = engine
        self._writes = writes  # group commit on SQLite (msd.writebatch); None: engine.begin()

    def __repr__(self) -> str:
        return f"SessionStore({self._engine.url.render_as_string(hide_password=True)!r})"

    @classmethod
    async def open(cls, url: str) -> SessionStore:
        """Connect (SQLite: WAL, synchronous=FULL) and upgrade the schema to the newest revision."""
        try:
            engine = await open_database(url, schema=SCHEMA, synchronous="FULL")
        except DatabaseError as exc:
            raise StoreError(str(exc)) from exc
        return cls(engine, writes=batcher_for(engine, synchronous="FULL"))

    async def close(self) -> None:
        if self._writes is not None:
            await self._writes.close()
        await self._engine.dispose()

    def _begin(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A write transaction; on SQLite one savepoint of a group commit (msd.writebatch):
        it returns once its batch is committed (synchronous=FULL), as durable as alone."""
        return self._engine.begin() if self._writes is None else self._writes.begin()

    async def ping(self) -> None:
        """Raise StoreError unless the database answers."""
        async with self._translate("ping"), self._engine.connect() as conn:
            await conn.execute(select(1))

    async def create(
        self, domain: str, session: Session, *, token: str, now: float
    ) -> SessionRecord:
        """Store a new session; IdTakenError if its id is held by an unexpired session."""
        body = session.model_dump_json()
        values = {
            "domain": domain,
            "id": session.id,
            "body": body,
            "token_sha256": hash_token(token),
            "created_at": now,
            "updated_at": now,
            "expires_at": now + session.ttl,
        }
        try:
            async with self._translate("create"), self._begin() as conn:
                # An expired session frees its id; both statements share one transaction,
                # so two creators racing for that id cannot both win.
                await conn.execute(
                    delete(sessions).where(
                        sessions.c.domain == domain,
                        sessions.c.id == session.id,
                        sessions.c.expires_at <= now,
                    )
                )
                await conn.execute(insert(sessions).values(**values))
        except IntegrityError:
            raise IdTakenError(
                f"id {session.id!r} is already taken in {domain}; choose another"
            ) from None
        return _record(domain, body, updated_at=now, expires_at=now + session.ttl)

    async def get(self, domain: str, session_id: str, *, now: float) -> SessionRecord | None:
        """The session, or None if there is none or it has expired."""
        query = select(sessions.c.body, sessions.c.updated_at, sessions.c.expires_at).where(
            sessions.c.domain == domain,
            sessions.c.id == session_id,
            sessions.c.expires_at > now,
        )
        async with self._translate("get"), self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return _record(domain, row.body, updated_at=row.updated_at, expires_at=row.expires_at)

    async def list_active(
        self, domain: str, *, now: float, after: str = "", limit: int = 100
    ) -> list[SessionRecord]:
        """Unexpired sessions in id order, those with ids after `after`, at most `limit`."""
        query = (
            select(sessions.c.body, sessions.c.updated_at, sessions.c.expires_at)
            .where(sessions.c.domain == domain, sessions.c.id > after,
                   sessions.c.expires_at > now)
            .order_by(sessions.c.id)
            .limit(limit)
        )
        async with self._translate("list"), self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(domain, r.body, updated_at=r.updated_at, expires_at=r.expires_at)
                for r in rows]

    async def mentioning(
        self, domain: str, keywords: Sequence[str], *, now: float, limit: int
    ) -> list[SessionRecord]:
        """Unexpired sessions whose stored JSON holds one of `keywords` as a quoted string,
        in id order, at most `limit`: a superset of the sessions carrying one of them (a
        title may equal a keyword), so the caller evaluates the query on each record."""
        if keywords and all(_PLAIN_KEYWORD.fullmatch(k) for k in keywords):
            # LIKE '%"jazz"%' (wildcards in the keyword escaped): the row's own keyword list
            # matches exactly, whatever the database's LIKE does with case.
            mentions = or_(*(sessions.c.body.contains(json.dumps(k, ensure_ascii=False),
                                                      autoescape=True) for k in keywords))
        else:
            mentions = true()
        query = (
            select(sessions.c.body, sessions.c.updated_at, sessions.c.expires_at)
            .where(sessions.c.domain == domain, sessions.c.expires_at > now, mentions)
            .order_by(sessions.c.id)
            .limit(limit)
        )
        async with self._translate("search"), self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(domain, r.body, updated_at=r.updated_at, expires_at=r.expires_at)
                for r in rows]

    async def check_owner(
        self, domain: str, session_id: str, *, token: str | None, now: float
    ) -> None:
        """SessionNotFoundError if it is missing or expired, TokenRejectedError if not the owner."""
        query = select(sessions.c.token_sha256).where(
            sessions.c.domain == domain,
            sessions.c.id == session_id,
            sessions.c.expires_at > now,
        )
        async with self._translate("check owner"), self._engine.connect() as conn:
            stored = (await conn.execute(query)).scalar_one_or_none()
        if stored is None:
            raise SessionNotFoundError(f"no session {session_uri(domain, session_id)}")
        # Compare digests in constant time: the response time must not leak a prefix.
        if token is None or not hmac.compare_digest(stored, hash_token(token)):
            raise TokenRejectedError(f"not the owner token of {session_uri(domain, session_id)}")

    async def replace(
        self, domain: str, session: Session, *, token: str, now: float
    ) -> SessionRecord:
        """Replace a session's parameters and refresh its expiry, if the token is the owner's."""
        await self.check_owner(domain, session.id, token=token, now=now)
        body = session.model_dump_json()
        statement = (
            update(sessions)
            .where(
                sessions.c.domain == domain,
                sessions.c.id == session.id,
                sessions.c.expires_at > now,
                # The row may have expired and been re-registered since the check above.
                sessions.c.token_sha256 == hash_token(token),
            )
            .values(body=body, updated_at=now, expires_at=now + session.ttl)
        )
        async with self._translate("replace"), self._begin() as conn:
            result = await conn.execute(statement)
        if result.rowcount != 1:
            raise SessionNotFoundError(f"no session {session_uri(domain, session.id)}")
        return _record(domain, body, updated_at=now, expires_at=now + session.ttl)

    async def purge_expired(self, *, now: float) -> int:
        """Delete expired sessions (and expired soft state); return how many sessions went."""
        async with self._translate("purge"), self._begin() as conn:
            result = await conn.execute(delete(sessions).where(sessions.c.expires_at <= now))
            # The designated row stays after it expires (one row per domain): its term is the
            # floor for the next claim, so a restarted domain never reuses an old term.
            await conn.execute(delete(msd_members).where(msd_members.c.expires_at <= now))
        return int(result.rowcount)

    async def count_active(self, domain: str, *, now: float) -> int:
        query = (
            select(func.count())
            .select_from(sessions)
            .where(sessions.c.domain == domain, sessions.c.expires_at > now)
        )
        async with self._translate("count"), self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def set_designated(
        self, domain: str, entry: Designated, *, now: float
    ) -> Designated:
        """Record the designated MSD unless an unexpired entry carries a higher term."""
        values = dataclasses.asdict(entry) | {"updated_at": now}
        try:
            async with self._translate("set designated"), self._begin() as conn:
                # One conditional UPDATE, then INSERT if there was no row: atomic per statement.
                result = await conn.execute(
                    update(designated)
                    .where(
                        designated.c.domain == domain,
                        (designated.c.term <= entry.term) | (designated.c.expires_at <= now),
                    )
                    .values(**values)
                )
                if result.rowcount == 0:
                    await conn.execute(insert(designated).values(domain=domain, **values))
        except IntegrityError:
            current = await self.get_designated(domain, now=now)
            term = current.term if current is not None else entry.term
            raise TermConflictError(
                f"designated MSD of {domain} has term {term}, higher than {entry.term}",
                current_term=term,
            ) from None
        return entry

    async def set_member(self, domain: str, member: Member) -> None:
        """Insert or refresh one MSD daemon's entry."""
        values = dataclasses.asdict(member)
        async with self._translate("set member"), self._begin() as conn:
            result = await conn.execute(
                update(msd_members)
                .where(msd_members.c.domain == domain, msd_members.c.msd_id == member.msd_id)
                .values(**values)
            )
            if result.rowcount == 0:
                await conn.execute(insert(msd_members).values(domain=domain, **values))

    async def members(self, domain: str, *, now: float) -> list[Member]:
        """The domain's MSD daemons whose entries have not expired, by address."""
        query = (select(msd_members)
                 .where(msd_members.c.domain == domain, msd_members.c.expires_at > now)
                 .order_by(msd_members.c.address, msd_members.c.port)
                 .limit(MEMBERS_MAX))
        async with self._translate("get members"), self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Member(msd_id=r.msd_id, address=r.address, port=r.port, pid=r.pid, role=r.role,
                       expires_at=r.expires_at) for r in rows]

    async def last_term(self, domain: str) -> int:
        """The highest term this domain's designated MSD ever held here (0: none yet)."""
        query = select(designated.c.term).where(designated.c.domain == domain)
        async with self._translate("get last term"), self._engine.connect() as conn:
            term = (await conn.execute(query)).scalar()
        return int(term or 0)

    async def get_designated(self, domain: str, *, now: float) -> Designated | None:
        query = select(
            designated.c.address, designated.c.port, designated.c.term, designated.c.expires_at
        ).where(designated.c.domain == domain, designated.c.expires_at > now)
        async with self._translate("get designated"), self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return Designated(
            address=row.address, port=row.port, term=row.term, expires_at=row.expires_at
        )

    @contextlib.asynccontextmanager
    async def _translate(self, operation: str) -> AsyncIterator[None]:
        # Library and OS errors stop here; IntegrityError is a meaning, left to the caller.
        try:
            yield
        except IntegrityError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"database {operation} failed: {type(exc).__name__}: {exc}") from exc


def _record(domain: str, body: str, *, updated_at: float, expires_at: float) -> SessionRecord:
    data = json.loads(body)
    return SessionRecord.model_validate(
        data
        | {
            "uri": session_uri(domain, data["id"]),
            "domain": domain,
            "updated_at": updated_at,
            "expires_at": expires_at,
        }
    )
