"""KurrentDB / EventStoreDB event store (``kurrentdbclient``, gRPC; KurrentDB >= 22.10).

How the port maps onto KurrentDB:

- A tradecore stream ``account-1`` is the KurrentDB stream ``account-1`` (prefixed with
  ``<namespace>.`` when the URL names a namespace). Versions are 1-based counts, KurrentDB
  stream positions 0-based: version = stream_position + 1, expected version 0 is
  ``StreamState.NO_STREAM``, n >= 1 is n - 1, None is ``StreamState.ANY``. A wrong
  expected version is the server's ``WrongCurrentVersionError``, raised as
  ``ConcurrencyError`` with both sides as counts. Every append reads its events back (the
  server only returns the last commit position), so an append costs two round trips.
- Positions are KurrentDB commit positions: unique per event, increasing in commit order
  (``$all`` is one totally ordered log; a position is visible only after every smaller
  one), but SPARSE (log offsets: the gaps are large and meaningless). Counting events by
  subtracting positions (projection "lag") is wrong for this backend. A position given
  to ``read_all``/``subscribe`` must be 0 or one this store handed out.
- Event ids: KurrentDB wants UUIDs. A tradecore id that is a canonical UUID is used as is,
  any other id as ``uuid5(EVENT_ID_NAMESPACE, id)``; the original id travels in the
  metadata. The server recognises a retried append (the same ids at the same expected
  version; with ``ANY``, ids it stored recently in that stream) and stores nothing twice;
  kurrentdbclient itself retries an append once on a gRPC error, which relies on this.
  KurrentDB does NOT index event ids: an id stored before the expected version of the
  stream, or in another stream, is not detected (SQLite/PostgreSQL refuse it).
- Idempotency records live in their own stream ``tradecore.idem-<key>`` (a claim protocol,
  see ``_Claims``), snapshots in ``tradecore.snapshot-<stream id>`` (``$maxCount`` 1).
  KurrentDB before 25.1 (the project runs 25.0) cannot append to two streams atomically;
  25.1's multi-stream append could, but takes only string-valued metadata and was not
  used (see ``_Claims`` for what the claim protocol guarantees instead).
- ``read_all``/``subscribe`` read ``$all`` with a server-side stream-name filter that keeps
  this store's event streams only (no ``$`` system streams, no idempotency or snapshot
  streams). ``subscribe`` reads batches with ``read_all`` and holds a catch-up
  subscription to ``$all`` (started from the end before the first read) only to wake up
  when something new commits.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog
from kurrentdbclient import KurrentDBClient, StreamState
from kurrentdbclient import NewEvent as KNewEvent
from kurrentdbclient import RecordedEvent as KRecordedEvent
from kurrentdbclient.connection_spec import ConnectionSpec
from kurrentdbclient.exceptions import NotFoundError, WrongCurrentVersionError

from adapters.eventstore.codec import EncodedEvent, dumps, encode_events, loads, utc
from adapters.eventstore.groupcommit import AppenderClosed
from commands.ports import AlreadyHandled, IdempotencyRecord, Snapshot
from domain.clock import Clock
from domain.envelope import NewEvent, RecordedEvent
from domain.errors import ConcurrencyError

log = structlog.get_logger(__name__)

SCHEMES = ("kurrentdb", "kurrentdb+discover", "esdb", "esdb+discover", "kdb", "kdb+discover")
"""URL schemes ``open_event_store`` routes here (the ones ``kurrentdbclient`` accepts)."""

EVENT_ID_NAMESPACE = uuid.UUID("6f1f0c52-4c1e-5c53-9a49-5d1f3c2b7e10")
"""uuid5 namespace for tradecore event ids that are not UUIDs. Never change it."""

RESERVED = "tradecore."
"""Stream-name prefix (after the namespace) of the adapter's own streams."""

_NAMESPACE = re.compile(r"^[A-Za-z0-9_]{1,64}$")

# --- pure mapping (unit-tested without a server) ------------------------------------


@dataclass(frozen=True, slots=True)
class KurrentDBLocation:
    """Where a store lives: the URI ``kurrentdbclient`` gets and this store's namespace."""

    client_uri: str
    namespace: str


def parse_url(url: str) -> KurrentDBLocation:
    """Split ``kurrentdb://host:port?tls=false[&namespace=name]`` into client URI and namespace.

    Also ``esdb://``, ``kdb://`` and their ``+discover`` forms. ``namespace`` (default none)
    prefixes every stream name with ``<namespace>.``, so several stores can share one
    database; the other query parameters go to ``kurrentdbclient``, which validates them.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"not a KurrentDB URL (scheme must be one of {', '.join(SCHEMES)}): {url!r}")
    if not parts.netloc:
        raise ValueError(f"KurrentDB URL needs a host: {url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    namespaces = [v for k, v in query if k.lower() == "namespace"]
    if len(namespaces) > 1:
        raise ValueError(f"namespace given twice in {url!r}")
    namespace = namespaces[0] if namespaces else ""
    if namespace and not _NAMESPACE.match(namespace):
        raise ValueError(f"namespace must match {_NAMESPACE.pattern}: {namespace!r}")
    rest = [(k, v) for k, v in query if k.lower() != "namespace"]
    client_uri = urlunsplit(parts._replace(scheme=scheme, query=urlencode(rest)))
    ConnectionSpec(client_uri)  # raises ValueError for what the client would refuse
    return KurrentDBLocation(client_uri=client_uri, namespace=namespace)


def kurrent_event_id(event_id: str) -> uuid.UUID:
    """The KurrentDB event id of a tradecore event id (the same on every retry)."""
    try:
        parsed = uuid.UUID(event_id)
    except ValueError:
        return uuid.uuid5(EVENT_ID_NAMESPACE, event_id)
    # Only the canonical spelling maps to itself; "{...}", upper-case or hyphen-less spellings
    # of the same UUID are other tradecore ids, so they get other KurrentDB ids.
    return parsed if str(parsed) == event_id else uuid.uuid5(EVENT_ID_NAMESPACE, event_id)


def to_current_version(expected_version: int) -> int | Literal[StreamState.NO_STREAM]:
    """KurrentDB's expected position for a tradecore expected version (a count)."""
    if expected_version < 0:
        raise ValueError(f"expected version must be >= 0, got {expected_version}")
    return StreamState.NO_STREAM if expected_version == 0 else expected_version - 1


def from_current_version(current: int | StreamState | None) -> int:
    """A tradecore version (count of events) from KurrentDB's current stream position."""
    if isinstance(current, int):
        return current + 1
    if current is StreamState.NO_STREAM or current is None:
        return 0
    raise ValueError(f"no version for stream state {current!r}")


class StreamNames:
    """Stream names of one namespace, and the ``$all`` filter that keeps its event streams."""

    def __init__(self, namespace: str = "") -> None:
        if namespace and not _NAMESPACE.match(namespace):
            raise ValueError(f"namespace must match {_NAMESPACE.pattern}: {namespace!r}")
        self.namespace = namespace
        self.prefix = f"{namespace}." if namespace else ""
        # Anchored by kurrentdbclient ("^" + pattern + "$"); [\s\S] also matches newlines.
        # Written for .NET regexes on the server; the unit tests check it with Python's re,
        # which agrees on this subset (lookahead, escapes, classes).
        reserved = re.escape(RESERVED)
        if namespace:
            self.all_filter = rf"{re.escape(self.prefix)}(?!\$|{reserved})[\s\S]+"
        else:
            self.all_filter = rf"(?!\$|{reserved})[\s\S]+"

    def events(self, stream_id: str) -> str:
        if not stream_id:
            raise ValueError("stream id must not be empty")
        if stream_id.startswith(("$", RESERVED)):
            raise ValueError(f"stream ids starting with '$' or {RESERVED!r} are reserved: {stream_id!r}")
        return self.prefix + stream_id

    def idempotency(self, key: str) -> str:
        if not key:
            raise ValueError("idempotency key must not be empty")
        return f"{self.prefix}{RESERVED}idem-{key}"

    def snapshot(self, stream_id: str) -> str:
        return f"{self.prefix}{RESERVED}snapshot-{stream_id}"

    def stream_id(self, stream_name: str) -> str | None:
        """The tradecore stream id of a KurrentDB stream, None if not an event stream here."""
        if not stream_name.startswith(self.prefix):
            return None
        stream_id = stream_name[len(self.prefix):]
        if not stream_id or stream_id.startswith(("$", RESERVED)):
            return None
        return stream_id

    def matches(self, stream_name: str) -> bool:
        """What the server-side filter keeps (re-checked on the client, cheaply)."""
        return self.stream_id(stream_name) is not None


def encode_metadata(enc: EncodedEvent, ts_recorded: datetime) -> bytes:
    """KurrentDB custom metadata: the tradecore envelope fields that are not the payload.

    ``$correlationId``/``$causationId`` are KurrentDB's own conventions (its
    ``$by_correlation_id`` projection reads them).
    """
    meta: dict[str, Any] = {
        "event_id": enc.event_id,
        "schema_version": enc.schema_version,
        "ts_recorded": ts_recorded.isoformat(),
        "metadata": enc.metadata,
    }
    if enc.metadata.get("correlation_id"):
        meta["$correlationId"] = enc.metadata["correlation_id"]
    if enc.metadata.get("causation_id"):
        meta["$causationId"] = enc.metadata["causation_id"]
    return dumps(meta).encode()


def to_new_event(enc: EncodedEvent, ts_recorded: datetime) -> KNewEvent:
    return KNewEvent(
        type=enc.type,
        data=enc.data_json.encode(),
        metadata=encode_metadata(enc, ts_recorded),
        content_type="application/json",
        id=kurrent_event_id(enc.event_id),
    )


def decode_event(ev: KRecordedEvent, names: StreamNames) -> RecordedEvent | None:
    """A tradecore envelope from a KurrentDB event; None for what is not one of ours."""
    stream_id = names.stream_id(ev.stream_name)
    if stream_id is None or ev.type.startswith("$"):
        return None  # e.g. a tombstone's $streamDeleted inside a stream
    try:
        meta = loads(ev.metadata)
        event_id, schema_version = meta["event_id"], meta["schema_version"]
        ts_recorded, metadata = meta["ts_recorded"], meta["metadata"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"event {ev.id} in stream {ev.stream_name!r} was not written by tradecore"
        ) from exc
    return RecordedEvent(
        event_id=event_id,
        stream_id=stream_id,
        version=ev.stream_position + 1,
        position=ev.commit_position,
        type=ev.type,
        schema_version=schema_version,
        data=loads(ev.data),
        metadata=metadata,
        ts_recorded=datetime.fromisoformat(ts_recorded),
    )


# --- idempotency claims ------------------------------------------------------------

_CLAIMED, _COMPLETED, _RELEASED, _RECORDED = (
    "IdempotencyClaimed", "IdempotencyCompleted", "IdempotencyReleased", "IdempotencyRecorded",
)


@dataclass(frozen=True, slots=True)
class _ClaimState:
    revision: int | Literal[StreamState.NO_STREAM]
    """Stream position of the claim stream's last event (what the next write expects)."""
    status: Literal["absent", "pending", "completed", "released"]
    claim: dict[str, Any] | None = None
    """Data of the latest ``IdempotencyClaimed`` (or ``IdempotencyRecorded``) event."""
    claim_event_id: uuid.UUID | None = None

    def record(self) -> IdempotencyRecord:
        assert self.claim is not None
        c = self.claim
        return IdempotencyRecord(
            key=c["key"], command_type=c["command_type"], fingerprint=c["fingerprint"], result=c["result"]
        )


def claim_state(events_newest_first: Sequence[KRecordedEvent]) -> _ClaimState:
    """Interpret the last two events of a claim stream."""
    if not events_newest_first:
        return _ClaimState(StreamState.NO_STREAM, "absent")
    last = events_newest_first[0]
    revision = last.stream_position
    if last.type == _RECORDED:
        return _ClaimState(revision, "completed", loads(last.data), last.id)
    if last.type == _CLAIMED:
        return _ClaimState(revision, "pending", loads(last.data), last.id)
    if last.type == _RELEASED:
        return _ClaimState(revision, "released")
    if last.type == _COMPLETED:
        previous = events_newest_first[1] if len(events_newest_first) > 1 else None
        if previous is None or previous.type != _CLAIMED:
            raise ValueError(f"claim stream {last.stream_name!r}: completion without a claim")
        return _ClaimState(revision, "completed", loads(previous.data), previous.id)
    raise ValueError(f"claim stream {last.stream_name!r}: unexpected event type {last.type!r}")


def _new(type_: str, data: dict[str, Any]) -> KNewEvent:
    return KNewEvent(type=type_, data=dumps(data).encode(), content_type="application/json")


class _Claims:
    """First-writer-wins idempotency keys, without a transaction spanning two streams.

    ``append`` with a key: (1) append ``IdempotencyClaimed`` (the record, the target
    stream, its version then, the expected version, the event ids) to the key's stream,
    expecting the revision read just before (so exactly one of racing writers claims);
    (2) append the events; (3) append ``IdempotencyCompleted``, or ``IdempotencyReleased``
    if (2) failed. A key whose claim is completed raises ``AlreadyHandled`` with the first
    record; a released key can be claimed again.

    A claim left pending (writer crashed or lost its connection between the steps) is
    resolved by whoever meets it: completed if the claimed events are in the target
    stream (looked up by their ids at the claimed version); released if they are not and
    cannot be any more (the stream moved past the claimed expected version), or once it
    has been seen pending for ``claim_timeout`` seconds. The events append carries a
    server deadline shorter than that timeout, so a released claim's events cannot
    commit afterwards, barring clock trouble on the server.
    """

    def __init__(self, store: KurrentDBEventStore, claim_timeout: float) -> None:
        self._store = store
        self._timeout = claim_timeout

    def state(self, key: str) -> _ClaimState:
        name = self._store.names.idempotency(key)
        try:
            events = self._store.client.get_stream(name, backwards=True, limit=2)
        except NotFoundError:
            events = ()
        return claim_state(events)

    def lookup(self, key: str) -> IdempotencyRecord | None:
        state = self.state(key)
        if state.status == "pending":
            state = self._resolve(key, state, pending_since=None) or state
        return state.record() if state.status == "completed" else None

    def claim(
        self, record: IdempotencyRecord, stream_id: str, expected_version: int | None,
        events: Sequence[EncodedEvent],
    ) -> int:
        """Claim ``record.key`` for this append; return the claim's revision."""
        name = self._store.names.idempotency(record.key)
        give_up = time.monotonic() + 2 * self._timeout + 5
        pending_since: dict[int, float] = {}
        mine: KNewEvent | None = None
        while True:
            state = self.state(record.key)
            if mine is not None and state.claim_event_id == mine.id and isinstance(state.revision, int):
                # Our claim was stored although its append reported a conflict (a retried
                # call after a lost acknowledgement): it is ours.
                if mine.type == _RECORDED:
                    return state.revision
                if state.status == "pending":
                    return state.revision
            if state.status == "completed":
                raise AlreadyHandled(state.record())
            if state.status == "pending":
                assert isinstance(state.revision, int)
                since = pending_since.setdefault(state.revision, time.monotonic())
                if self._resolve(record.key, state, pending_since=since) is None:
                    if time.monotonic() > give_up:
                        raise TimeoutError(f"idempotency key {record.key!r} stays claimed")
                    time.sleep(0.05)
                continue
            data = {
                "key": record.key,
                "command_type": record.command_type,
                "fingerprint": record.fingerprint,
                "result": record.result,
                "stream_id": stream_id,
                "expected_version": expected_version,
                "event_ids": [str(kurrent_event_id(e.event_id)) for e in events],
            }
            if not events:
                self._check_noop_version(stream_id, expected_version)
            # Where the events will be: exactly here for a checked append, here or later
            # for an unchecked one (others may append first).
            data["from_version"] = (
                self._store.stream_version(stream_id) if expected_version is None else expected_version
            )
            mine = _new(_RECORDED if not events else _CLAIMED, data)
            try:
                self._store.client.append_to_stream(name, events=[mine], current_version=state.revision)
            except WrongCurrentVersionError:
                continue  # somebody else claimed (or resolved) it meanwhile: look again
            return 0 if state.revision is StreamState.NO_STREAM else state.revision + 1

    def _check_noop_version(self, stream_id: str, expected_version: int | None) -> None:
        # A command that decided nothing appends nothing: its version check is a read.
        if expected_version is not None:
            actual = self._store.stream_version(stream_id)
            if actual != expected_version:
                raise ConcurrencyError(stream_id, expected_version, actual)

    def finish(self, key: str, revision: int, *, completed: bool, reason: str = "") -> None:
        """Mark our own claim completed or released (best effort: a resolver can do it too)."""
        name = self._store.names.idempotency(key)
        event = _new(_COMPLETED, {}) if completed else _new(_RELEASED, {"reason": reason})
        try:
            self._store.client.append_to_stream(name, events=[event], current_version=revision)
        except WrongCurrentVersionError:
            # A resolver got there first. Completing the claim for us is fine; releasing it
            # while our events were being stored frees a key whose command took effect:
            # loud, because a retry of that command could now take effect twice.
            if completed and self.state(key).status != "completed":
                log.error("idempotency claim released under a successful append", key=key)
        except Exception as exc:
            log.warning("idempotency claim left pending", key=key, completed=completed, error=repr(exc))

    def _resolve(self, key: str, state: _ClaimState, pending_since: float | None) -> _ClaimState | None:
        """Complete or release a pending claim if its fate is known; None if still in flight."""
        assert state.claim is not None and isinstance(state.revision, int)
        claim = state.claim
        stored = self._store.claimed_events_stored(claim)
        if stored:
            outcome = "completed"
        elif stored is None or (pending_since is not None and time.monotonic() - pending_since >= self._timeout):
            outcome = "released"  # None: the claimed append can no longer succeed
        else:
            return None
        name = self._store.names.idempotency(key)
        event = _new(_COMPLETED, {}) if outcome == "completed" else _new(_RELEASED, {"reason": "abandoned"})
        with contextlib.suppress(WrongCurrentVersionError):  # someone else resolved it first
            self._store.client.append_to_stream(name, events=[event], current_version=state.revision)
        log.info("idempotency claim resolved", key=key, outcome=outcome)
        return self.state(key)


# --- the store ---------------------------------------------------------------------


class KurrentDBEventStore:
    """Event store on KurrentDB/EventStoreDB (see the module docstring for the mapping)."""

    positions_are_dense = False
    """Positions are KurrentDB commit positions: increasing in commit order, with gaps."""
    detects_stored_event_ids = False
    """Only ids re-sent at the same expected version (a retry) are recognised, not an id
    stored earlier in the stream or in another stream: KurrentDB has no index by event id."""

    def __init__(
        self,
        url_or_client: str | KurrentDBClient,
        clock: Clock,
        *,
        namespace: str | None = None,
        append_timeout: float = 10.0,
        claim_timeout: float = 30.0,
        poll_interval: float = 1.0,
        any_search: int = 10_000,
    ) -> None:
        """Open the store.

        ``namespace`` overrides the URL's; ``append_timeout`` is the gRPC deadline of an
        events append (the server drops it after that), ``claim_timeout`` how long a
        pending idempotency claim is waited for before it is released (must exceed the
        append deadline); ``poll_interval`` the fallback re-read period of ``subscribe``;
        ``any_search`` how far back an unchecked append recognised as a repeat is looked for.
        """
        if claim_timeout <= append_timeout:
            raise ValueError("claim_timeout must exceed append_timeout")
        if isinstance(url_or_client, str):
            location = parse_url(url_or_client)
            self.client = KurrentDBClient(location.client_uri)
            self._owns_client = True
            ns = location.namespace if namespace is None else namespace
        else:
            self.client = url_or_client
            self._owns_client = False
            ns = namespace or ""
        self.names = StreamNames(ns)
        self._clock = clock
        self._append_timeout = append_timeout
        self._poll_interval = poll_interval
        self._any_search = any_search
        self._claims = _Claims(self, claim_timeout)
        self._closed = False
        self._subscriptions: set[Any] = set()
        self._subs_lock = threading.Lock()

    @property
    def namespace(self) -> str:
        return self.names.namespace

    @property
    def closed(self) -> bool:
        return self._closed

    # --- writing -------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        idempotency: IdempotencyRecord | None = None,
    ) -> list[RecordedEvent]:
        if self._closed:
            raise AppenderClosed("event store is closed")
        name = self.names.events(stream_id)
        encoded = encode_events(events)
        if expected_version is not None and expected_version < 0:
            raise ValueError(f"expected version must be >= 0 or None, got {expected_version}")
        if idempotency is None:
            return self._append_events(stream_id, name, encoded, expected_version)
        dumps(idempotency.result)  # refuse a result that is not JSON-safe before claiming
        revision = self._claims.claim(idempotency, stream_id, expected_version, encoded)
        if not encoded:
            return []
        try:
            recorded = self._append_events(stream_id, name, encoded, expected_version)
        except (ConcurrencyError, ValueError) as exc:
            # Definitely not stored: free the key for the retry of the command.
            self._claims.finish(idempotency.key, revision, completed=False, reason=type(exc).__name__)
            raise
        except BaseException as exc:
            # Outcome unknown (deadline, lost connection): the events may have committed.
            # The claim stays pending; whoever meets it next looks for the events.
            log.warning("append outcome unknown; idempotency claim left pending", key=idempotency.key,
                        stream_id=stream_id, error=repr(exc))
            raise
        self._claims.finish(idempotency.key, revision, completed=True)
        return recorded

    def _append_events(
        self, stream_id: str, name: str, encoded: list[EncodedEvent], expected_version: int | None
    ) -> list[RecordedEvent]:
        if not encoded:
            if expected_version is not None and expected_version != self.stream_version(stream_id):
                raise ConcurrencyError(stream_id, expected_version, self.stream_version(stream_id))
            return []
        ts = utc(self._clock.now())
        new = [to_new_event(e, ts) for e in encoded]
        if expected_version is not None:
            return self._append_at(stream_id, name, encoded, new, expected_version)
        # No check: StreamState.ANY, where the server recognises ids it stored recently in
        # this stream (its idempotency cache) and stores them once. The events land at or
        # after the version read first, or, when recognised, where they were stored before.
        before = self.stream_version(stream_id)
        ids = [e.id for e in new]
        try:
            self.client.append_to_stream(
                name, events=new, current_version=StreamState.ANY, timeout=self._append_timeout
            )
        except WrongCurrentVersionError as exc:  # some of the ids stored, some not
            raise ConcurrencyError(stream_id, before, from_current_version(exc.actual_version)) from None
        return self._find_appended(stream_id, name, ids, before)

    def _append_at(
        self, stream_id: str, name: str, encoded: list[EncodedEvent], new: list[KNewEvent], version: int
    ) -> list[RecordedEvent]:
        try:
            self.client.append_to_stream(
                name, events=new, current_version=to_current_version(version), timeout=self._append_timeout
            )
        except WrongCurrentVersionError as exc:
            stored = self._stored_at(stream_id, name, [e.id for e in new], version)
            if stored is not None:
                return stored  # a retry whose first attempt was stored after all
            raise ConcurrencyError(stream_id, version, from_current_version(exc.actual_version)) from None
        stored = self._stored_at(stream_id, name, [e.id for e in new], version)
        if stored is None:
            raise RuntimeError(f"appended events are not at {stream_id}@{version + 1}")
        return stored

    def _find_appended(
        self, stream_id: str, name: str, ids: list[uuid.UUID], before: int
    ) -> list[RecordedEvent]:
        """The events with ``ids`` just appended with ``StreamState.ANY`` after ``before``."""
        found = self.client.get_stream(name, stream_position=before)
        at = next((i for i, e in enumerate(found) if e.id == ids[0]), None)
        if at is None:
            # Recognised as a repeat: the earlier copy lies before ``before``.
            found = tuple(reversed(self.client.get_stream(name, backwards=True, limit=self._any_search)))
            at = next((i for i, e in enumerate(found) if e.id == ids[0]), None)
        chunk = found[at:at + len(ids)] if at is not None else ()
        if [e.id for e in chunk] != ids:
            raise RuntimeError(f"appended events not found in {stream_id} from version {before + 1}")
        return [r for r in (decode_event(e, self.names) for e in chunk) if r is not None]

    def _stored_at(
        self, stream_id: str, name: str, ids: list[uuid.UUID], version: int
    ) -> list[RecordedEvent] | None:
        """The events with ``ids`` stored right after ``version``; None if they are not.

        Raises ``ConcurrencyError`` when only some of them are there.
        """
        try:
            found = self.client.get_stream(name, stream_position=version, limit=len(ids))
        except NotFoundError:
            return None
        found_ids = [e.id for e in found]
        if found_ids == ids:
            return [r for r in (decode_event(e, self.names) for e in found) if r is not None]
        if set(found_ids) & set(ids):
            raise ConcurrencyError(stream_id, version, version + len(found_ids))
        return None

    def claimed_events_stored(self, claim: dict[str, Any]) -> bool | None:
        """Whether a claim's events are stored: True, False (maybe later), None (never)."""
        stream_id, expected = claim["stream_id"], claim["expected_version"]
        ids = {uuid.UUID(i) for i in claim["event_ids"]}
        name = self.names.events(stream_id)
        # An append is all or nothing: one of its ids in place means all of them are.
        if expected is not None:
            try:
                found = self.client.get_stream(name, stream_position=claim["from_version"], limit=len(ids))
            except NotFoundError:
                found = ()
            if any(e.id in ids for e in found):
                return True
            if self.stream_version(stream_id) > expected:
                return None  # the stream moved on without them: that append can never succeed
            return False
        try:
            found = self.client.get_stream(name, stream_position=claim["from_version"])
        except NotFoundError:
            found = ()
        return any(e.id in ids for e in found)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        name = self.names.snapshot(snapshot.stream_id)
        if self.client.get_current_version(name) is StreamState.NO_STREAM:
            self.client.set_stream_metadata(name, metadata={"$maxCount": 1})
        data = {"version": snapshot.version, "schema": snapshot.schema, "state": snapshot.state}
        self.client.append_to_stream(name, events=[_new("Snapshot", data)], current_version=StreamState.ANY)

    # --- reading -------------------------------------------------------------------

    def lookup_idempotency(self, key: str) -> IdempotencyRecord | None:
        return self._claims.lookup(key)

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        name = self.names.events(stream_id)
        try:
            found = self.client.get_stream(name, stream_position=max(from_version, 1) - 1)
        except NotFoundError:
            return []
        return [r for r in (decode_event(e, self.names) for e in found) if r is not None]

    def stream_version(self, stream_id: str) -> int:
        return from_current_version(self.client.get_current_version(self.names.events(stream_id)))

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        if limit <= 0:
            return []
        start = after_position if after_position > 0 else None
        # Forward reads include the event AT the start position: read one more, drop it.
        with self.client.read_all(
            commit_position=start,
            filter_include=(self.names.all_filter,),
            filter_by_stream_name=True,
            limit=limit + (1 if start is not None else 0),
        ) as response:
            out = [
                r
                for r in (decode_event(e, self.names) for e in response if e.commit_position > after_position)
                if r is not None
            ]
        return out[:limit]

    def last_position(self) -> int:
        return self.client.get_commit_position(
            filter_include=(self.names.all_filter,), filter_by_stream_name=True
        )

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        try:
            found = self.client.get_stream(self.names.snapshot(stream_id), backwards=True, limit=1)
        except NotFoundError:
            return None
        if not found:
            return None
        data = loads(found[0].data)
        return Snapshot(stream_id=stream_id, version=data["version"], schema=data["schema"], state=data["state"])

    def subscribe(
        self,
        after_position: int = 0,
        *,
        stop: threading.Event | None = None,
        batch: int = 1000,
        poll_interval: float | None = None,
    ) -> Iterator[list[RecordedEvent]]:
        """Yield batches after ``after_position``; wakes on a new commit, re-reads every ``poll_interval``.

        Holds one catch-up subscription to ``$all`` (this namespace's streams) while iterating.
        """
        fallback = self._poll_interval if poll_interval is None else poll_interval
        pos = after_position
        waker = _Waker(self)
        try:
            waker.start()  # before the first read: a commit after that read always wakes us
            while stop is None or not stop.is_set():
                chunk = self.read_all(pos, batch)
                if chunk:
                    pos = chunk[-1].position
                    yield chunk
                    continue
                waker.wait(fallback, stop)
        finally:
            waker.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._subs_lock:
            subs = list(self._subscriptions)
        for sub in subs:
            sub.stop()
        if self._owns_client:
            self.client.close()

    def _track(self, sub: Any, *, add: bool) -> None:
        with self._subs_lock:
            if add:
                self._subscriptions.add(sub)
            else:
                self._subscriptions.discard(sub)


class _Waker:
    """A catch-up subscription from the end of ``$all`` that only says "something committed"."""

    def __init__(self, store: KurrentDBEventStore) -> None:
        self._store = store
        self._woken = threading.Event()
        self._closing = threading.Event()
        self._sub: Any = None
        self._thread: threading.Thread | None = None
        self._failures = 0

    def start(self) -> None:
        store = self._store
        # Returns once the server confirmed the subscription, so it sees every later commit.
        self._sub = store.client.subscribe_to_all(
            from_end=True, filter_include=(store.names.all_filter,), filter_by_stream_name=True
        )
        store._track(self._sub, add=True)
        self._thread = threading.Thread(target=self._run, args=(self._sub,), name="kurrentdb-waker", daemon=True)
        self._thread.start()

    def _run(self, sub: Any) -> None:
        try:
            for _ in sub:
                self._woken.set()
        except Exception as exc:
            if not self._closing.is_set() and not self._store.closed:
                log.warning("event store subscription dropped; resubscribing", error=repr(exc))
        finally:
            self._store._track(sub, add=False)
            self._woken.set()  # the reader re-reads (covering any gap) and restarts us

    def wait(self, timeout: float, stop: threading.Event | None) -> None:
        deadline = time.monotonic() + timeout
        while stop is None or not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Short slices keep ``stop`` responsive.
            if self._woken.wait(min(remaining, 0.05)):
                break
        self._woken.clear()
        if self._store.closed:
            raise AppenderClosed("event store is closed")
        if self._thread is not None and not self._thread.is_alive() and not self._closing.is_set():
            self._failures += 1
            if self._failures > 5:
                raise ConnectionError("KurrentDB subscription keeps failing")
            time.sleep(min(0.1 * 2**self._failures, 2.0))
            self.start()
        elif self._thread is not None and self._thread.is_alive():
            self._failures = 0

    def close(self) -> None:
        self._closing.set()
        if self._sub is not None:
            self._sub.stop()
        if self._thread is not None:
            self._thread.join(2)
