"""Deterministic partitioning of cases into shards: ``--shard K/N`` on several machines, then merge.

A case belongs to shard ``K`` of ``N`` (1-based) when a hash of its id, taken modulo N, is K - 1.
The hash is SHA-256 of the id, so the partition is the same on every machine, Python version and
run, and does not depend on which other cases were generated: shards of one run never overlap
and together hold every case.
"""
from __future__ import annotations

import hashlib
import re
from typing import Iterable, TypeVar

__all__ = ["Shard", "parse_shard", "shard_of", "select"]

T = TypeVar("T")
_SHARD_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


class Shard(tuple):
    """(index K, count N), 1 <= K <= N."""

    def __new__(cls, index: int, count: int) -> "Shard":
        if count < 1 or not 1 <= index <= count:
            raise ValueError(f"shard: expected K/N with 1 <= K <= N, got {index}/{count}")
        return super().__new__(cls, (index, count))

    @property
    def index(self) -> int:
        return self[0]

    @property
    def count(self) -> int:
        return self[1]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def contains(self, case_id: str) -> bool:
        return shard_of(case_id, self.count) == self.index


def parse_shard(text: str) -> Shard:
    m = _SHARD_RE.fullmatch(text or "")
    if not m:
        raise ValueError(f"--shard: expected K/N such as 2/4, got {text!r}")
    return Shard(int(m.group(1)), int(m.group(2)))


def shard_of(case_id: str, count: int) -> int:
    """The 1-based shard of ``count`` that holds ``case_id``."""
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def select(items: Iterable[T], shard: Shard | None, key=lambda item: item.id) -> list[T]:
    """The items of ``shard`` (all of them when shard is None), order kept."""
    items = list(items)
    if shard is None:
        return items
    return [item for item in items if shard.contains(key(item))]
