"""How a bulk roster write behaves when a transaction fails: the count of what landed is exact,
and no transaction starts after the failure (the wire itself is tested on Azurite in
tests/integration/test_storage.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import sync.roster
from sync.roster import PartialWrite, submit_transactions
from sync.table_wire import Delete


class RefusingTable:
    """Stands in for one transaction on the wire: the first fails once all four slots are busy,
    the others land once the failure is known."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.failed = asyncio.Event()

    async def submit(self, table: Any, operations: list[Delete]) -> None:
        number = len(self.started) + 1
        self.started.append(number)
        if number == 1:
            while len(self.started) < 4:  # wait until the other three are in flight
                await asyncio.sleep(0)
            self.failed.set()
            raise ConnectionError("storage went away")
        await self.failed.wait()
        await asyncio.sleep(0.01)


async def test_no_transaction_starts_after_one_fails_and_the_count_is_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wire = RefusingTable()
    monkeypatch.setattr(sync.roster, "submit_transaction", wire.submit)
    operations = [Delete("tenant", f"user-{i}") for i in range(1000)]  # ten transactions of 100
    with pytest.raises(PartialWrite) as partial:
        await submit_transactions(None, iter(operations), len(operations))  # type: ignore[arg-type]
    assert wire.started == [1, 2, 3, 4]  # the three in flight finished; the fifth never started
    assert (partial.value.written, partial.value.total) == (300, 1000)
    assert isinstance(partial.value.cause, ConnectionError)
    assert str(partial.value).startswith("300 of 1000 changes written (ConnectionError")


async def test_every_transaction_lands_when_none_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    landed: list[int] = []

    async def submit(table: Any, operations: list[Delete]) -> None:
        await asyncio.sleep(0)
        landed.append(len(operations))

    monkeypatch.setattr(sync.roster, "submit_transaction", submit)
    operations = [Delete("tenant", f"user-{i}") for i in range(250)]
    assert await submit_transactions(None, iter(operations), 250) == 3  # type: ignore[arg-type]
    assert sorted(landed) == [50, 100, 100]
