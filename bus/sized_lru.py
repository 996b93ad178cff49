"""A least-recently-used map bounded by entries and by the bytes its values
take: what the gateway keeps of records (bus/jobstore.py) and of small
results (bus/result_store.py) so a hot path skips a round trip. A count
alone would let a few huge values take the memory.

The bytes bound counts what an entry costs besides its value's bytes too:
its key, the tuple it is kept in, the map's slot. Counted by the values
alone, 8 MiB of no-op results (27 bytes of text each) held 264,000 entries
and 68 MB (tracemalloc, CPython 3.11), and a gateway's memory grew by
300 bytes a job for its first quarter-million jobs."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# What an entry takes besides its value's bytes, measured with tracemalloc on
# CPython 3.11 while old entries go as new ones come (the map's table keeps
# the slots of those gone until it resizes): 343 bytes with an int key and a
# str value (the results), 442 with a 40-character str key and a (bytes, int)
# value (the records, which a count of entries bounds first).
ENTRY_OVERHEAD_BYTES = 400


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
        """Newest last; the oldest go first past either bound. `size`: the
        value's bytes (the entry's own cost is added here)."""
        self.pop(key)
        size += ENTRY_OVERHEAD_BYTES
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
