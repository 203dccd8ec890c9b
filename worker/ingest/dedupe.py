"""A compact dedupe table: 64-bit keys to the first row that had them, in about 12 bytes per slot.

A dict of 1M int keys to int rows costs ~150 bytes an entry (two int objects plus the dict slot);
this open-addressing table keeps raw keys in an array('Q') and rows in an array('I') at a load of at
most one half: ~25 MB for 1M distinct addresses. Key 0 marks an empty slot (real key 0 is stored as 1:
phone keys are never 0, and an email hash of 0 is a 2**-64 event whose only effect would be a merge).
"""
from __future__ import annotations

from array import array

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads sequential phone numbers over the table


class DedupeTable:
    """Maps 64-bit keys to the first row seen with them."""

    __slots__ = ("_bits", "_keys", "_rows", "_mask", "_shift", "_count", "_limit")

    def __init__(self, expected: int = 0) -> None:
        bits = 10
        while (1 << bits) < 2 * expected:
            bits += 1
        self._allocate(bits)

    def _allocate(self, bits: int) -> None:
        size = 1 << bits
        self._bits = bits
        self._keys = array("Q", [0]) * size  # no temporary bytes: half the peak
        self._rows = array("I", [0]) * size
        self._mask = size - 1
        self._shift = 64 - bits
        self._count = 0
        self._limit = size // 2

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays."""
        return self._keys.itemsize * len(self._keys) + self._rows.itemsize * len(self._rows)

    def first(self, key: int, row: int) -> int:
        """The first row recorded for `key`; records `row` (and returns it) if the key is new."""
        key = (key & _MASK64) or 1
        keys = self._keys
        mask = self._mask
        slot = ((key * _GOLDEN) & _MASK64) >> self._shift
        while True:
            found = keys[slot]
            if found == key:
                return self._rows[slot]
            if not found:
                break
            slot = (slot + 1) & mask
        keys[slot] = key
        self._rows[slot] = row
        self._count += 1
        if self._count > self._limit:
            self._grow()
        return row

    def _grow(self) -> None:
        old_keys, old_rows = self._keys, self._rows
        self._allocate(self._bits + 1)
        keys, rows, mask, shift = self._keys, self._rows, self._mask, self._shift
        count = 0
        for key, row in zip(old_keys, old_rows):
            if key:
                slot = ((key * _GOLDEN) & _MASK64) >> shift
                while keys[slot]:
                    slot = (slot + 1) & mask
                keys[slot] = key
                rows[slot] = row
                count += 1
        self._count = count
