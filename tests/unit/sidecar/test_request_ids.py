"""Request ids: 128 random bits as 32 hex digits, never repeated, fetched from the OS in bulk."""

from __future__ import annotations

import re

from packgate_sidecar.app import _RequestIds


def test_ids_are_random_hex_and_unique_across_refills() -> None:
    ids = _RequestIds()
    drawn = [ids.next() for _ in range(_RequestIds.BATCH * 3 + 5)]  # three refills and more
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in drawn)
    assert len(set(drawn)) == len(drawn)
    other = _RequestIds()
    assert not {other.next() for _ in range(_RequestIds.BATCH)} & set(drawn)
