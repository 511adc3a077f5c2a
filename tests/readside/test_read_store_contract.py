"""The read-store contract, run against memory, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from conftest import ReadStoreFactory
from helpers import canon

from domain.envelope import RecordedEvent
from projections.base import Projection, Query, ReadModel, TableSpec
from projections.store import ReadStore, RebuildInProgress, StaleCopy, UnknownTable

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


class Things(Projection):
    name = "things"
    version = 1
    tables = (
        TableSpec("things", indexes=("account_id", "status", "amount"), order_by="ts"),
        TableSpec("thing_tags", indexes=("thing",)),
        TableSpec("thing_days", indexes=("account_id",), order_by="day", descending=False),
    )
    handles: ClassVar[frozenset[str]] = frozenset()

    def apply(self, model: ReadModel, rec: RecordedEvent) -> None:
        raise NotImplementedError


class ThingsV2(Things):
    version = 2


def thing(i: int, **over: Any) -> dict[str, Any]:
    row = {
        "id": f"t{i:02d}", "account_id": f"a{i % 3}", "status": "open" if i % 2 else "closed",
        "amount": Decimal(i) / Decimal(4), "ts": T0 + timedelta(minutes=i), "n": i,
    }
    row.update(over)
    return row


@pytest.fixture
def store(read_store: ReadStore) -> ReadStore:
    read_store.register([Things])
    return read_store


def test_a_registered_projection_starts_empty_at_checkpoint_zero(store: ReadStore) -> None:
    assert store.checkpoint("things") == 0
    assert store.get("things", "t1") is None
    [info] = store.copies("things")
    assert info.active and info.position == 0 and info.version == 1 and info.error is None
    assert info.tables == Things.tables


def test_register_twice_keeps_the_copy_and_its_rows(store: ReadStore) -> None:
    store.commit("things", {"things": {"t1": thing(1)}}, 5)
    store.register([Things])
    assert store.checkpoint("things") == 5
    assert store.get("things", "t1") == thing(1)


def test_a_table_declared_by_two_projections_is_refused(store: ReadStore) -> None:
    class Other(Things):
        name = "other"

    with pytest.raises(ValueError, match="declared by both"):
        store.register([Other])


def test_rows_and_checkpoint_are_written_together(store: ReadStore) -> None:
    store.commit("things", {"things": {"t1": thing(1), "t2": thing(2)}}, 7, last_event_ts=T0)
    assert store.checkpoint("things") == 7
    assert store.get("things", "t2") == thing(2)
    [info] = store.copies("things")
    assert info.last_event_ts == T0 and info.updated_at is not None


def test_a_delete_removes_the_row(store: ReadStore) -> None:
    store.commit("things", {"things": {"t1": thing(1), "t2": thing(2)}}, 1)
    store.commit("things", {"things": {"t1": None}}, 2)
    assert store.get("things", "t1") is None
    assert store.get("things", "t2") == thing(2)
    assert store.query(Query("things")).total == 1


EXACT_ROW: dict[str, Any] = {
    "price": Decimal("64250.50"),
    "tiny": Decimal("0.00000001"),
    "exp": Decimal("1E+3"),
    "neg_zero": Decimal("-0"),
    "neg": Decimal("-12.3400"),
    "big": Decimal("123456789012345678901234567890.123456789"),
    "utc": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    "offset": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    "naive": datetime(2026, 1, 2, 3, 4, 5),
    "day": date(2026, 2, 28),
    "nested": {"levels": [Decimal("1.10"), {"at": datetime(2026, 1, 1, tzinfo=UTC)}], "n": None},
    "text": "\x01looks like a tag",
    "unicode": "ключ ✓ 🚀",
    "flag": True,
    "count": 2**62,
    "ratio": 0.1,
    "empty": [],
}


def test_decimal_datetime_and_odd_values_round_trip_exactly(store: ReadStore) -> None:
    store.commit("things", {"thing_tags": {"x": dict(EXACT_ROW)}}, 1)
    got = store.get("thing_tags", "x")
    assert got is not None
    assert canon(got) == canon(EXACT_ROW)
    assert type(got["price"]) is Decimal and str(got["price"]) == "64250.50"
    assert got["offset"].utcoffset() == timedelta(hours=5, minutes=30)
    assert got["naive"].tzinfo is None
    assert type(got["day"]) is date


def test_a_key_starting_with_the_tag_character_survives(store: ReadStore) -> None:
    row = {"\x01d": "not a decimal", "v": "\x01d1.5"}
    store.commit("things", {"thing_tags": {"k": row}}, 1)
    assert store.get("thing_tags", "k") == row


@pytest.mark.parametrize("stage", ["rows", "commit"])
def test_a_failure_inside_a_commit_applies_nothing(make_read_store: ReadStoreFactory, stage: str) -> None:
    armed = {"on": False}

    def fault(where: str) -> None:
        if armed["on"] and where == stage:
            raise RuntimeError(f"crash at {where}")

    store = make_read_store(fault=fault)
    store.register([Things])
    store.commit("things", {"things": {"t1": thing(1), "t2": thing(2)}}, 10)
    armed["on"] = True
    with pytest.raises(RuntimeError, match="crash"):
        store.commit("things", {"things": {"t1": thing(1, status="moved"), "t2": None, "t3": thing(3)},
                                "thing_tags": {"x": {"thing": "t1"}}}, 11)
    armed["on"] = False
    assert store.checkpoint("things") == 10
    assert store.get("things", "t1") == thing(1)
    assert store.get("things", "t2") == thing(2)
    assert store.get("things", "t3") is None
    assert store.get("thing_tags", "x") is None
    assert store.query(Query("things", equals={"status": "moved"})).total == 0
    # and the store still works afterwards
    store.commit("things", {"things": {"t3": thing(3)}}, 11)
    assert store.checkpoint("things") == 11


def test_a_commit_from_a_stale_checkpoint_is_refused_whole(store: ReadStore) -> None:
    store.commit("things", {"things": {"t1": thing(1)}}, 5, expected=0)
    with pytest.raises(StaleCopy):
        store.commit("things", {"things": {"t1": thing(1, status="twice")}}, 6, expected=0)
    assert store.get("things", "t1") == thing(1)
    assert store.checkpoint("things") == 5


def test_a_redelivered_position_is_refused(store: ReadStore) -> None:
    store.commit("things", {"things": {"t1": thing(1)}}, 5)
    for position in (5, 4):
        with pytest.raises(StaleCopy):
            store.commit("things", {"things": {"t9": thing(9)}}, position)
    assert store.get("things", "t9") is None


def test_unknown_tables_are_refused(store: ReadStore) -> None:
    with pytest.raises(UnknownTable):
        store.get("nope", "k")
    with pytest.raises(UnknownTable):
        store.commit("things", {"nope": {"k": {}}}, 1)
    assert store.checkpoint("things") == 0


# --- queries -------------------------------------------------------------------------


@pytest.fixture
def filled(store: ReadStore) -> ReadStore:
    rows = {f"t{i:02d}": thing(i) for i in range(1, 21)}
    rows["t90"] = thing(90, ts=None, account_id="a0", status=None)
    rows["t91"] = thing(91, amount=Decimal("-3.5"), account_id="a0")
    store.commit("things", {"things": rows}, 1)
    return store


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in items]


def test_query_filters_on_indexed_fields_newest_first_missing_last(filled: ReadStore) -> None:
    page = filled.query(Query("things", equals={"account_id": "a0"}))
    assert page.total == 8
    assert ids(page.items) == ["t91", "t18", "t15", "t12", "t09", "t06", "t03", "t90"]


def test_query_combines_filters_and_matches_none(filled: ReadStore) -> None:
    assert ids(filled.query(Query("things", equals={"account_id": "a1", "status": "open"})).items) == [
        "t19", "t13", "t07", "t01"]
    assert ids(filled.query(Query("things", equals={"status": None})).items) == ["t90"]


def test_query_pages(filled: ReadStore) -> None:
    page = filled.query(Query("things", limit=5, offset=5))
    assert page.total == 22 and page.limit == 5 and page.offset == 5
    assert ids(page.items) == ["t16", "t15", "t14", "t13", "t12"]
    assert filled.query(Query("things", limit=5, offset=40)).items == []


def test_query_range_on_the_sort_field_is_inclusive(filled: ReadStore) -> None:
    page = filled.query(Query("things", range_field="ts", range_from=T0 + timedelta(minutes=3),
                              range_to=T0 + timedelta(minutes=6)))
    assert ids(page.items) == ["t06", "t05", "t04", "t03"]


def test_query_range_compares_instants_across_time_zones(filled: ReadStore) -> None:
    plus2 = timezone(timedelta(hours=2))
    page = filled.query(Query("things", range_field="ts", range_from=(T0 + timedelta(minutes=19)).astimezone(plus2)))
    assert ids(page.items) == ["t91", "t20", "t19"]


def test_query_range_on_decimals_is_numeric(filled: ReadStore) -> None:
    page = filled.query(Query("things", range_field="amount", range_from=Decimal("-4"), range_to=Decimal("1.0")))
    assert sorted(ids(page.items)) == ["t01", "t02", "t03", "t04", "t91"]
    page = filled.query(Query("things", equals={"amount": Decimal("0.50")}))
    assert ids(page.items) == ["t02"]
    page = filled.query(Query("things", range_field="amount", range_from=4))
    assert ids(page.items) == ["t20", "t19", "t18", "t17", "t16", "t90"]


def test_query_sorts_ascending_when_declared(store: ReadStore) -> None:
    days = {f"a:{d}": {"account_id": "a", "day": d} for d in ("2026-01-03", "2026-01-01", "2026-01-02")}
    store.commit("things", {"thing_days": days}, 1)
    assert [r["day"] for r in store.query(Query("thing_days")).items] == ["2026-01-01", "2026-01-02", "2026-01-03"]


def test_query_without_a_sort_field_orders_by_key(store: ReadStore) -> None:
    store.commit("things", {"thing_tags": {k: {"thing": "x", "k": k} for k in ("b", "a", "c")}}, 1)
    assert [r["k"] for r in store.query(Query("thing_tags")).items] == ["a", "b", "c"]


def test_query_refuses_fields_that_are_not_indexed(filled: ReadStore) -> None:
    with pytest.raises(ValueError, match="not indexed"):
        filled.query(Query("things", equals={"n": 3}))
    with pytest.raises(ValueError):
        filled.query(Query("things", range_field="n", range_from=1))


def test_a_copy_view_finds_by_any_field_and_is_read_only(filled: ReadStore) -> None:
    view = filled.load_model("things")
    assert sorted(k for k, _ in view.find("things", account_id="a2", status="closed")) == ["t02", "t08", "t14", "t20"]
    assert [k for k, _ in view.find("things", n=7)] == ["t07"]
    assert view.get("things", "t07") == thing(7)
    with pytest.raises(TypeError):
        view.put("things", "x", {})


# --- copies, rebuilds, swaps -----------------------------------------------------------


def test_a_rebuilt_copy_is_invisible_until_swapped(filled: ReadStore) -> None:
    copy = filled.begin_rebuild(Things)
    filled.commit("things", {"things": {"new": thing(100)}}, 50, copy=copy, expected=0)
    assert filled.get("things", "new") is None
    assert filled.checkpoint("things") == 1
    filled.swap("things", copy, {"things": {"newer": thing(101)}}, 60, last_event_ts=T0)
    assert filled.active_copy("things") == copy
    assert filled.checkpoint("things") == 60
    assert filled.get("things", "t01") is None
    assert ids(filled.query(Query("things")).items) == ["t101", "t100"]
    [info] = filled.copies("things")
    assert info.copy == copy and info.rebuilt_at is not None and info.last_event_ts == T0


def test_a_runner_on_the_swapped_out_copy_gets_stale_copy(filled: ReadStore) -> None:
    old = filled.active_copy("things")
    view = filled.load_model("things")
    copy = filled.begin_rebuild(Things)
    filled.swap("things", copy, None, 1)
    with pytest.raises(StaleCopy):
        filled.commit("things", {"things": {"x": thing(5)}}, 2, copy=old, expected=1)
    with pytest.raises(StaleCopy):
        view.get("things", "t01")
    assert filled.get("things", "x") is None


def test_a_second_rebuild_of_the_same_projection_is_refused(store: ReadStore) -> None:
    copy = store.begin_rebuild(Things)
    with pytest.raises(RebuildInProgress):
        store.begin_rebuild(Things)
    store.abandon("things", copy)
    again = store.begin_rebuild(Things)
    assert again != copy
    store.abandon("things", again)


def test_an_abandoned_rebuild_leaves_the_live_copy_untouched(filled: ReadStore) -> None:
    live = filled.active_copy("things")
    copy = filled.begin_rebuild(Things)
    filled.commit("things", {"things": {"junk": thing(99)}}, 3, copy=copy, expected=0)
    filled.abandon("things", copy)
    assert [c.copy for c in filled.copies("things")] == [live]
    assert filled.checkpoint("things") == 1 and filled.get("things", "t01") == thing(1)


def test_a_leftover_copy_from_a_dead_rebuild_is_dropped_by_the_next(make_read_store: ReadStoreFactory) -> None:
    first = make_read_store()
    first.register([Things])
    first.commit("things", {"things": {"t1": thing(1)}}, 1)
    second = make_read_store(same=True)
    leftover = second.begin_rebuild(Things)
    second.commit("things", {"things": {"junk": thing(2)}}, 1, copy=leftover, expected=0)
    second.close()  # dies without swapping: its lock/lease goes with it
    copy = first.begin_rebuild(Things)
    assert sorted(c.copy for c in first.copies("things")) == sorted([first.active_copy("things"), copy])
    assert leftover not in [c.copy for c in first.copies("things")]
    first.swap("things", copy, None, 1)
    assert first.get("things", "t1") is None and first.get("things", "junk") is None


def test_a_new_version_makes_the_copy_stale(store: ReadStore) -> None:
    [info] = store.copies("things")
    assert not info.is_stale(Things)
    assert info.is_stale(ThingsV2)
    copy = store.begin_rebuild(ThingsV2)
    store.swap("things", copy)
    [info] = store.copies("things")
    assert info.version == 2 and not info.is_stale(ThingsV2)


def test_an_error_is_stored_and_cleared_by_the_next_commit(store: ReadStore) -> None:
    store.set_error("things", "ZeroDivisionError: boom")
    assert store.copies("things")[0].error == "ZeroDivisionError: boom"
    store.commit("things", {}, 3)
    assert store.copies("things")[0].error is None


def test_utc_datetimes_encode_and_index_the_same_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import projections.store as store_module
    from adapters.readstore import decode_row, encode_row
    from projections.store import index_key

    monkeypatch.setattr(store_module, "_UTC_CACHE_MAX", 3)  # forces the caches to start afresh
    cest = timezone(timedelta(hours=2))
    values = [T0, T0 + timedelta(microseconds=5), T0.astimezone(cest), T0.replace(tzinfo=None), T0, T0]
    for v in values * 2:
        row = {"at": v, "also": v, "day": v.date()}
        assert encode_row(row).decode().count("\\u0001") == 3
        assert decode_row(encode_row(row)) == row
        assert str(decode_row(encode_row(row))["at"]) == str(v)
        expected = "t" + (v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)).isoformat()[:-6]
        assert index_key(v) == expected
    assert index_key(T0) < index_key(T0 + timedelta(microseconds=5)) < index_key(T0 + timedelta(seconds=1))
