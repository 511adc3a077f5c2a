"""Small projections and comparison helpers for the read-side tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from adapters.readstore.memory import MemoryReadStore
from commands.ports import EventStore
from domain.envelope import RecordedEvent
from projections.base import Projection, ReadModel, Row, TableSpec
from projections.store import ReadStore, projection_instance
from streams.rebuild import rebuild


class LedgerProjection(Projection):
    """Cash per account and one row per money movement (gets, puts, finds, deletes)."""

    name = "t_ledger"
    version = 1
    tables = (
        TableSpec("t_balances", indexes=("owner_id", "halted")),
        TableSpec("t_moves", indexes=("account_id", "kind"), order_by="ts"),
    )
    handles: ClassVar[frozenset[str]] = frozenset(
        {"AccountOpened", "FundsDeposited", "FundsWithdrawn", "TradingHalted", "TradingResumed"}
    )

    def apply(self, model: ReadModel, rec: RecordedEvent) -> None:
        e: Any = rec.event
        if rec.type == "AccountOpened":
            model.put("t_balances", e.account_id, {
                "account_id": e.account_id, "owner_id": e.owner_id, "cash": Decimal(0), "moves": 0,
                "halted": False, "opened_at": e.at, "last": None,
            })
            return
        bal = model.get("t_balances", e.account_id)
        assert bal is not None, f"no balance row for {e.account_id}"
        if rec.type in ("TradingHalted", "TradingResumed"):
            bal["halted"] = rec.type == "TradingHalted"
            model.put("t_balances", e.account_id, bal)
            if rec.type == "TradingResumed":
                # Resuming forgets the last withdrawal (exercises delete + find).
                for key, _ in model.find("t_moves", account_id=e.account_id, kind="withdrawal"):
                    model.delete("t_moves", key)
            return
        sign = 1 if rec.type == "FundsDeposited" else -1
        bal["cash"] += sign * e.amount
        bal["moves"] += 1
        bal["last"] = {"amount": e.amount, "at": e.at, "position": rec.position}
        model.put("t_balances", e.account_id, bal)
        model.put("t_moves", f"{e.account_id}:{rec.version:06d}", {
            "account_id": e.account_id, "kind": "deposit" if sign > 0 else "withdrawal",
            "amount": e.amount, "ts": e.at, "position": rec.position,
        })


class FlakyProjection(LedgerProjection):
    """Like the ledger, but fails on the ``fail_at``-th deposit it sees."""

    name = "t_flaky"
    tables = (
        TableSpec("t_flaky_balances", indexes=("owner_id", "halted")),
        TableSpec("t_flaky_moves", indexes=("account_id", "kind"), order_by="ts"),
    )
    fail_at = 3

    def __init__(self) -> None:
        self.seen = 0

    def apply(self, model: ReadModel, rec: RecordedEvent) -> None:
        if rec.type == "FundsDeposited":
            self.seen += 1
            if self.seen == self.fail_at:
                raise ZeroDivisionError("deliberate failure")
        super().apply(_Renamed(model), rec)


class _Renamed:
    """Maps the ledger's table names onto the flaky projection's."""

    def __init__(self, model: ReadModel) -> None:
        self._m = model

    def get(self, table: str, key: str) -> Row | None:
        return self._m.get(table.replace("t_", "t_flaky_", 1), key)

    def put(self, table: str, key: str, row: Row) -> None:
        self._m.put(table.replace("t_", "t_flaky_", 1), key, row)

    def delete(self, table: str, key: str) -> None:
        self._m.delete(table.replace("t_", "t_flaky_", 1), key)

    def find(self, table: str, **equals: Any) -> Any:
        return self._m.find(table.replace("t_", "t_flaky_", 1), **equals)


def all_projections() -> list[type[Projection]]:
    from projections.registry import ALL_PROJECTIONS

    return list(ALL_PROJECTIONS)


Dump = dict[str, dict[str, dict[str, Row]]]


def dump(read_store: ReadStore, projections: Iterable[Projection | type[Projection]]) -> Dump:
    """Every row of each projection's active copy: projection -> table -> key -> row."""
    out: Dump = {}
    for p in projections:
        model = read_store.load_model(p.name)
        out[p.name] = {t.name: dict(model.find(t.name)) for t in p.tables}
    return out


def replay_dump(store: EventStore, projections: Iterable[Projection | type[Projection]],
                to_position: int | None = None) -> Dump:
    """What a from-scratch replay produces (into memory)."""
    ps = [projection_instance(p) for p in projections]
    memory = MemoryReadStore()
    rebuild(store, memory, ps, to_position=to_position)
    return dump(memory, ps)


def assert_same(actual: Dump, expected: Dump) -> None:
    """Equal row for row, with a readable first difference."""
    assert actual.keys() == expected.keys()
    for p in expected:
        for table, rows in expected[p].items():
            got = actual[p][table]
            missing = sorted(set(rows) - set(got))[:3]
            extra = sorted(set(got) - set(rows))[:3]
            assert not missing and not extra, f"{p}.{table}: missing {missing}, extra {extra}"
            for key, row in rows.items():
                assert got[key] == row, f"{p}.{table}[{key}]:\n got {got[key]}\nwant {row}"
                # Exactness, not just numeric equality: Decimal('1.10') must stay '1.10'.
                assert canon(got[key]) == canon(row), f"{p}.{table}[{key}]"


def canon(value: Any) -> Any:
    """A comparable form that keeps types and exact text (dict key order aside)."""
    if isinstance(value, dict):
        return tuple(sorted((k, canon(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(canon(v) for v in value)
    if isinstance(value, Decimal):
        return ("Decimal", str(value))
    if isinstance(value, datetime):
        return ("datetime", value.isoformat())
    if isinstance(value, bool) or value is None:
        return ("const", value)
    if isinstance(value, str):
        return ("str", str(value))  # Symbol/StrEnum come back as plain strings
    if isinstance(value, int):
        return ("int", int(value))
    return (type(value).__name__, repr(value))
