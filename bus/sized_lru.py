"""A least-recently-used map bounded by entries and by the bytes its values
take: what the gateway keeps of records (bus/jobstore.py) and of small
results (bus/result_store.py) so a hot path skips a round trip. A count
alone would let a few huge values take the memory."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SizedLru(Generic[K, V]):
    def __init__(self, *, max_bytes: int, max_entries: int | None = None) -> None:
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()  # key -> (value, its size)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        return item[0] if item is not None else None

    def put(self, key: K, value: V, size: int) -> None:
        """Newest last; the oldest go first past either bound."""
        self.pop(key)
        self._items[key] = (value, size)
        self.bytes += size
        while self._items and self._over():
            _, (_, gone) = self._items.popitem(last=False)
            self.bytes -= gone

    def _over(self) -> bool:
        return self.bytes > self._max_bytes or (self._max_entries is not None and len(self._items) > self._max_entries)

    def pop(self, key: K) -> V | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.bytes -= item[1]
        return item[0]
