"""The parts of the KurrentDB adapter that need no server: URLs, versions, ids, filters, codecs.

The contract suite runs the adapter against a real server where one is reachable; these
pin down the mapping itself, using kurrentdbclient's own request builders and data
classes (no mocks), so a mistake in it shows here too.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

pytest.importorskip("kurrentdbclient", reason="the eventstoredb extra (kurrentdbclient) is not installed")

from kurrentdbclient import RecordedEvent as KRecordedEvent  # noqa: E402
from kurrentdbclient import StreamState  # noqa: E402
from kurrentdbclient.common import construct_filter_include_regex  # noqa: E402
from kurrentdbclient.exceptions import ServiceUnavailableError  # noqa: E402
from kurrentdbclient.streams import BaseStreamsService  # noqa: E402

from adapters.eventstore import open_event_store  # noqa: E402
from adapters.eventstore.codec import encode_event  # noqa: E402
from adapters.eventstore.groupcommit import AppenderClosed  # noqa: E402
from adapters.eventstore.kurrentdb import (  # noqa: E402
    EVENT_ID_NAMESPACE,
    KurrentDBEventStore,
    StreamNames,
    claim_state,
    decode_event,
    from_current_version,
    kurrent_event_id,
    parse_url,
    to_current_version,
    to_new_event,
)
from commands.ports import IdempotencyRecord  # noqa: E402
from domain.clock import ManualClock  # noqa: E402
from domain.envelope import Metadata, NewEvent  # noqa: E402
from domain.events import Event  # noqa: E402
from domain.values import Money  # noqa: E402

# --- URLs ----------------------------------------------------------------------------


def test_kurrentdb_url_keeps_client_options_and_takes_out_the_namespace() -> None:
    location = parse_url("kurrentdb://db.internal:2113?tls=false&namespace=desk_7&connectionName=tc")

    assert location.namespace == "desk_7"
    assert location.client_uri == "kurrentdb://db.internal:2113?tls=false&connectionName=tc"


def test_kurrentdb_url_keeps_credentials_and_file_options() -> None:
    location = parse_url("kurrentdb://admin:changeit@db:2113?namespace=n&tlsCaFile=/etc/ca%20dir/ca.crt")

    assert location.namespace == "n"
    assert location.client_uri.startswith("kurrentdb://admin:changeit@db:2113?")
    from kurrentdbclient.connection_spec import ConnectionSpec

    spec = ConnectionSpec(location.client_uri)
    assert (spec.username, spec.password) == ("admin", "changeit")
    assert spec.options.tls_ca_file == "/etc/ca dir/ca.crt"


@pytest.mark.parametrize(
    "url",
    [
        "esdb://127.0.0.1:2113?tls=false",
        "esdb+discover://cluster.local:2113?tls=false",
        "kurrentdb+discover://admin:changeit@cluster.local:2113",  # TLS (the default) needs a user
        "kdb://127.0.0.1:2113?tls=false",
        "KurrentDB://127.0.0.1:2113?tls=false",
    ],
)
def test_every_scheme_kurrentdbclient_accepts_is_a_kurrentdb_url(url: str) -> None:
    location = parse_url(url)

    assert location.namespace == ""
    assert location.client_uri.split("://")[0] == url.split("://")[0].lower()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://127.0.0.1/db",  # another backend
        "kurrentdb://",  # no host
        "kurrentdb://127.0.0.1:2113?tls=false&namespace=a.b",  # a dot would break the prefix
        "kurrentdb://127.0.0.1:2113?namespace=a&namespace=b",
        "kurrentdb://127.0.0.1:2113?tls=false&colour=blue",  # the client refuses unknown options
    ],
)
def test_bad_kurrentdb_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_open_event_store_picks_kurrentdb_for_kurrentdb_and_esdb_urls() -> None:
    # Opening does not connect; the first call does, and port 1 refuses it.
    for url in ("kurrentdb://127.0.0.1:1?tls=false&namespace=n1", "esdb://127.0.0.1:1?tls=false"):
        store = open_event_store(url, ManualClock())
        try:
            assert isinstance(store, KurrentDBEventStore)
            with pytest.raises(ServiceUnavailableError):
                store.stream_version("acct-1")
        finally:
            store.close()


def test_closed_store_refuses_appends_and_reserved_stream_ids_are_refused_before_any_io() -> None:
    store = KurrentDBEventStore("kurrentdb://127.0.0.1:1?tls=false", ManualClock())
    for reserved in ("$all", "tradecore.idem-k", ""):
        with pytest.raises(ValueError):
            store.append(reserved, [note()], 0)
    store.close()
    with pytest.raises(AppenderClosed):
        store.append("acct-1", [note()], 0)


# --- versions ------------------------------------------------------------------------


def test_expected_versions_map_one_based_counts_to_zero_based_stream_positions() -> None:
    assert to_current_version(0) is StreamState.NO_STREAM
    assert [to_current_version(n) for n in (1, 2, 10)] == [0, 1, 9]
    with pytest.raises(ValueError):
        to_current_version(-1)


def test_current_versions_map_back_to_counts() -> None:
    assert from_current_version(StreamState.NO_STREAM) == 0
    assert from_current_version(None) == 0
    assert [from_current_version(p) for p in (0, 1, 9)] == [1, 2, 10]
    with pytest.raises(ValueError):
        from_current_version(StreamState.ANY)
    assert all(from_current_version(to_current_version(n)) == n for n in range(50))


def test_expected_version_reaches_the_wire_as_kurrentdbclient_sends_it() -> None:
    new = [to_new_event(encode_event(note()), NOW)]
    empty = BaseStreamsService._construct_batch_append_req("acct-1", to_current_version(0), new, uuid.uuid4())
    third = BaseStreamsService._construct_batch_append_req("acct-1", to_current_version(3), new, uuid.uuid4())

    assert empty.options.WhichOneof("expected_stream_position") == "no_stream"
    assert third.options.WhichOneof("expected_stream_position") == "stream_position"
    assert third.options.stream_position == 2
    assert third.proposed_messages[0].id.string == str(new[0].id)


# --- event ids -----------------------------------------------------------------------


def test_a_canonical_uuid_event_id_is_used_as_is() -> None:
    event_id = str(uuid.uuid4())

    assert kurrent_event_id(event_id) == uuid.UUID(event_id)


@pytest.mark.parametrize(
    "event_id",
    ["cmd-42:0", "order-filled-7", "6F1F0C52-4C1E-5C53-9A49-5D1F3C2B7E10", "{6f1f0c52-4c1e-5c53-9a49-5d1f3c2b7e10}"],
)
def test_other_event_ids_become_stable_uuid5s(event_id: str) -> None:
    derived = kurrent_event_id(event_id)

    assert derived == uuid.uuid5(EVENT_ID_NAMESPACE, event_id)
    assert derived.version == 5
    assert kurrent_event_id(event_id) == derived  # the same on every retry


def test_distinct_event_ids_never_share_a_kurrentdb_id() -> None:
    ids = [f"evt-{i}" for i in range(1000)] + [str(uuid.uuid4()) for _ in range(1000)]
    ids += [i.upper() for i in ids[1000:1010]]  # other spellings of the same UUIDs

    assert len({kurrent_event_id(i) for i in ids}) == len(ids)


# --- stream names and the $all filter --------------------------------------------------


def kept_by_server(names: StreamNames, stream_name: str) -> bool:
    """Apply the filter as the server gets it (kurrentdbclient anchors it)."""
    return re.match(construct_filter_include_regex([names.all_filter]), stream_name) is not None


@pytest.mark.parametrize("namespace", ["", "contract_ab12"])
def test_all_filter_keeps_event_streams_and_drops_system_and_adapter_streams(namespace: str) -> None:
    names = StreamNames(namespace)
    p = names.prefix

    for kept in ("account-1", "bot-7", "user-a\nb", "a"):
        assert kept_by_server(names, p + kept), kept
        assert names.stream_id(p + kept) == kept
    for dropped in (
        "$all", "$$account-1", "$et-OrderFilled", "$ce-account", "$by_category",
        names.idempotency("cmd-1"), names.snapshot("account-1"), f"{p}$x",
    ):
        assert not kept_by_server(names, dropped), dropped
        assert names.stream_id(dropped) is None


def test_a_namespaced_filter_drops_other_namespaces_and_unprefixed_streams() -> None:
    names = StreamNames("desk1")

    assert names.events("account-1") == "desk1.account-1"
    assert not kept_by_server(names, "account-1")
    assert not kept_by_server(names, "desk10.account-1")
    assert not kept_by_server(names, "desk1account-1")
    assert not kept_by_server(names, "desk1.")
    assert kept_by_server(names, "desk1.account-1")


def test_filter_reaches_the_wire_as_a_stream_name_regex() -> None:
    names = StreamNames("desk1")

    request = BaseStreamsService._construct_read_request(
        commit_position=1234, filter_include=(names.all_filter,), filter_by_stream_name=True, limit=11
    )

    options = request.options
    assert options.all.position.commit_position == 1234
    assert options.WhichOneof("filter_option") == "filter"
    assert options.filter.WhichOneof("filter") == "stream_identifier"
    assert options.filter.stream_identifier.regex == construct_filter_include_regex([names.all_filter])
    assert options.count == 11


def test_adapter_streams_and_reserved_ids_are_kept_apart() -> None:
    names = StreamNames()

    assert names.idempotency("cmd-1") == "tradecore.idem-cmd-1"
    assert names.snapshot("account-1") == "tradecore.snapshot-account-1"
    for reserved in ("$all", "tradecore.idem-x", ""):
        with pytest.raises(ValueError):
            names.events(reserved)
    with pytest.raises(ValueError):
        StreamNames("a.b")


# --- envelope codec ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class KurrentNoted(Event):
    text: str
    fee: Money


NOW = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)


def note(text: str = "hi", **metadata: object) -> NewEvent:
    return NewEvent(event=KurrentNoted(text=text, fee=Money("-0.10")), metadata=Metadata(**metadata))  # type: ignore[arg-type]


def recorded_as_kurrentdb_returns_it(
    new: NewEvent, stream_name: str, stream_position: int, commit_position: int
) -> KRecordedEvent:
    k = to_new_event(encode_event(new), NOW)
    return KRecordedEvent(
        type=k.type, data=k.data, metadata=k.metadata, content_type=k.content_type, id=k.id,
        stream_name=stream_name, stream_position=stream_position,
        commit_position=commit_position, prepare_position=commit_position,
    )


def test_envelope_round_trips_through_kurrentdb_event_fields() -> None:
    names = StreamNames("desk1")
    new = note(
        "fill", correlation_id="corr-1", causation_id="cmd-1", user_id="u-7", idempotency_key="idem-1",
        ts_event=datetime(2026, 3, 14, 17, 9, 26, 5, tzinfo=timezone(timedelta(hours=2))),
    )

    read = decode_event(recorded_as_kurrentdb_returns_it(new, "desk1.account-1", 4, 98_765), names)

    assert read is not None
    assert (read.event_id, read.stream_id, read.version, read.position) == (new.event_id, "account-1", 5, 98_765)
    assert (read.type, read.schema_version) == ("KurrentNoted", 1)
    assert read.data == {"text": "fill", "fee": "-0.10"}
    assert read.metadata == new.metadata.to_dict()
    assert read.ts_recorded == NOW and read.ts_recorded.utcoffset() == timedelta(0)
    assert read.event == new.event


def test_kurrentdb_correlation_conventions_are_filled_in() -> None:
    k = to_new_event(encode_event(note(correlation_id="corr-1", causation_id="cmd-1")), NOW)
    meta = __import__("orjson").loads(k.metadata)

    assert (meta["$correlationId"], meta["$causationId"]) == ("corr-1", "cmd-1")
    assert k.content_type == "application/json"
    assert "$correlationId" not in __import__("orjson").loads(to_new_event(encode_event(note()), NOW).metadata)


def test_foreign_and_system_events_are_not_decoded_as_tradecore_events() -> None:
    names = StreamNames()
    tombstone = KRecordedEvent(
        type="$streamDeleted", data=b"", metadata=b"", content_type="", id=uuid.uuid4(),
        stream_name="account-1", stream_position=3, commit_position=10, prepare_position=10,
    )
    foreign = KRecordedEvent(
        type="SomethingElse", data=b"{}", metadata=b"", content_type="application/json", id=uuid.uuid4(),
        stream_name="account-1", stream_position=0, commit_position=5, prepare_position=5,
    )

    assert decode_event(tombstone, names) is None
    assert decode_event(recorded_as_kurrentdb_returns_it(note(), "tradecore.idem-k", 0, 7), names) is None
    with pytest.raises(ValueError, match="not written by tradecore"):
        decode_event(foreign, names)


# --- idempotency claim streams ---------------------------------------------------------


def claim_event(type_: str, position: int, data: bytes = b"{}") -> KRecordedEvent:
    return KRecordedEvent(
        type=type_, data=data, metadata=b"", content_type="application/json", id=uuid.uuid4(),
        stream_name="tradecore.idem-k", stream_position=position, commit_position=position, prepare_position=position,
    )


RECORD = IdempotencyRecord(key="k", command_type="PlaceOrder", fingerprint="fp", result={"order_id": "o-1"})
CLAIM = (
    b'{"key":"k","command_type":"PlaceOrder","fingerprint":"fp","result":{"order_id":"o-1"},'
    b'"stream_id":"acct-1","expected_version":0,"event_ids":[],"from_version":0}'
)


def test_claim_stream_states() -> None:
    claimed = claim_event("IdempotencyClaimed", 0, CLAIM)

    absent = claim_state([])
    pending = claim_state([claimed])
    completed = claim_state([claim_event("IdempotencyCompleted", 1), claimed])
    released = claim_state([claim_event("IdempotencyReleased", 1), claimed])
    recorded = claim_state([claim_event("IdempotencyRecorded", 2, CLAIM), claim_event("IdempotencyReleased", 1)])

    assert (absent.status, absent.revision) == ("absent", StreamState.NO_STREAM)
    assert (pending.status, pending.revision, pending.claim_event_id) == ("pending", 0, claimed.id)
    assert (completed.status, completed.revision) == ("completed", 1) and completed.record() == RECORD
    assert (released.status, released.revision) == ("released", 1)
    assert (recorded.status, recorded.revision) == ("completed", 2) and recorded.record() == RECORD
    with pytest.raises(ValueError):
        claim_state([claim_event("IdempotencyCompleted", 0)])
    with pytest.raises(ValueError):
        claim_state([claim_event("Surprise", 0)])
