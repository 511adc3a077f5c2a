from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from projections.base import Query, TableSpec
from projections.memory import InMemoryReadModel
from projections.store import MemoryTables, UnknownTable

SPEC = TableSpec("items", indexes=("account_id", "status"), order_by="ts")


def make() -> InMemoryReadModel:
    m = InMemoryReadModel([SPEC])
    for i, (acc, status) in enumerate([("a", "open"), ("a", "closed"), ("b", "open"), ("a", "open")]):
        m.put("items", f"k{i}", {"account_id": acc, "status": status, "ts": datetime(2026, 1, 1, i, tzinfo=UTC),
                                 "qty": D(i)})
    return m


def keys(it: object) -> set[str]:
    return {k for k, _ in it}  # type: ignore[attr-defined]


def test_find_by_one_and_by_two_indexed_fields() -> None:
    m = make()
    assert keys(m.find("items", account_id="a")) == {"k0", "k1", "k3"}
    assert keys(m.find("items", account_id="a", status="open")) == {"k0", "k3"}
    assert keys(m.find("items", account_id="zzz")) == set()
    assert keys(m.find("items")) == {"k0", "k1", "k2", "k3"}


def test_find_on_a_field_that_is_not_indexed_is_refused() -> None:
    with pytest.raises(ValueError, match="not indexed"):
        list(make().find("items", qty=D(1)))


def test_a_row_mutated_in_place_then_put_is_refiled_under_its_new_values() -> None:
    m = make()
    row = m.get("items", "k0")
    assert row is not None
    row["status"] = "closed"
    m.put("items", "k0", row)
    assert keys(m.find("items", status="closed")) == {"k0", "k1"}
    assert keys(m.find("items", status="open")) == {"k2", "k3"}


def test_delete_removes_the_row_from_every_index() -> None:
    m = make()
    m.delete("items", "k3")
    m.delete("items", "missing")
    assert m.get("items", "k3") is None
    assert keys(m.find("items", account_id="a", status="open")) == {"k0"}


def test_query_filters_ranges_sorts_newest_first_and_pages_copies() -> None:
    m = make()
    page = m.query(Query(table="items", equals={"account_id": "a"},
                         range_field="ts", range_from=datetime(2026, 1, 1, 1, tzinfo=UTC), limit=1))
    assert page.total == 2
    assert [r["qty"] for r in page.items] == [D(3)]
    page.items[0]["qty"] = D(99)
    assert m.get("items", "k3")["qty"] == D(3)  # type: ignore[index]


def test_unknown_tables_are_refused() -> None:
    with pytest.raises(UnknownTable):
        make().put("nope", "k", {})


def test_bulk_load_puts_rows_deletes_nones_and_keeps_built_indexes_current() -> None:
    spec = TableSpec("orders", indexes=("account_id",))
    tables = MemoryTables([spec])
    tables.load("orders", {"o1": {"account_id": "a1"}, "o2": {"account_id": "a2"}, "o3": None})
    assert tables.tables()["orders"] == {"o1": {"account_id": "a1"}, "o2": {"account_id": "a2"}}
    assert [k for k, _ in tables.find("orders", account_id="a1")] == ["o1"]  # builds the index
    tables.load("orders", {"o1": None, "o4": {"account_id": "a1"}})
    assert [k for k, _ in tables.find("orders", account_id="a1")] == ["o4"]
    assert sorted(tables.tables()["orders"]) == ["o2", "o4"]
