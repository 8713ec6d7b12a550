"""Skipped samples: one summary line per shard instead of a warning per sample, and a
sanity stop when most of the first samples cannot be used (a wrong `data.image_key`
or `data.text_key` makes every sample fail)."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import NamedTuple

log = logging.getLogger(__name__)


class Skipped(NamedTuple):
    """A sample the decoder refused: its shard, its key and why."""

    url: str
    key: str
    reason: str


class UnusableData(ValueError):
    """Too many of the first samples were skipped: the data or its keys are wrong."""


def check_skip_limits(max_skipped_fraction: float, sanity_samples: int) -> list[str]:
    """Problems with the `data.max_skipped_fraction` / `data.sanity_samples` fields."""
    problems = []
    if not 0 <= max_skipped_fraction <= 1:
        problems.append(
            f"data.max_skipped_fraction={max_skipped_fraction} must be in [0, 1]: the "
            "fraction of the first data.sanity_samples that may be skipped (1: no limit)"
        )
    if sanity_samples < 1:
        problems.append(f"data.sanity_samples={sanity_samples} must be at least 1")
    return problems


class SkipMonitor:
    """Counts the first `sanity_samples` samples' outcomes and raises `UnusableData` as
    soon as more than `max_fraction` of them are certain to be skipped. Logs the first
    skip of each shard at once and, every `summary_seconds` (and at `flush`), one line
    per shard with its skips since the last summary, counted by reason: a shuffle
    buffer interleaves shards, so a summary cannot wait for a shard's end."""

    def __init__(
        self, max_fraction: float, sanity_samples: int, keys: str, summary_seconds: float = 60.0
    ):
        self.limit = int(max_fraction * sanity_samples)
        self.window = sanity_samples
        self.keys = keys  # "data.image_key='jpg', data.text_key='txt'" for the message
        self.summary_seconds = summary_seconds
        self.used = 0
        self.skipped = 0
        self.members: Counter[str] = Counter()
        self.json_fields: set[str] = set()
        self._announced: set[str] = set()
        self._pending: dict[str, Counter[str]] = {}
        self._last_summary = time.monotonic()
        self._all_reasons: Counter[str] = Counter()

    @property
    def checking(self) -> bool:
        return self.used + self.skipped < self.window

    def saw(self, sample: dict) -> None:
        """A raw sample from the stream, before decoding: its member names."""
        if not self.checking:
            return
        members = [name for name in sample if not name.startswith("__")]
        self.members.update(members)
        if "json" in sample and len(self.json_fields) < 64:
            self.json_fields.update(_json_fields(sample["json"]))

    def decoded(self) -> None:
        if self.checking:
            self.used += 1

    def skip(self, skipped: Skipped) -> None:
        if skipped.url not in self._announced:
            self._announced.add(skipped.url)
            log.warning(
                "skipping sample %r in %s: %s (this shard's further skips are summarised)",
                skipped.key, skipped.url, skipped.reason,
            )  # fmt: skip
        self._pending.setdefault(skipped.url, Counter())[skipped.reason] += 1
        if self.checking:
            self.skipped += 1
            self._all_reasons[skipped.reason] += 1
            if self.skipped > self.limit:
                raise UnusableData(self._message())
        if time.monotonic() - self._last_summary > self.summary_seconds:
            self.flush()

    def flush(self) -> None:
        """Logs each shard's skips since the last summary."""
        for line in shard_summaries(self._pending):
            log.warning("%s", line)
        self._pending = {}
        self._last_summary = time.monotonic()

    def _message(self) -> str:
        seen = self.used + self.skipped
        members = ", ".join(f"{name} ({n})" for name, n in sorted(self.members.items())) or "none"
        reason, count = self._all_reasons.most_common(1)[0]
        message = (
            f"{self.skipped} of the first {seen} samples could not be used (more than "
            f"data.max_skipped_fraction of data.sanity_samples={self.window} allowed: "
            f"{self.limit}); most often ({count} x): {reason}. With {self.keys}, the "
            f"members seen in those samples were: {members}"
        )
        if self.json_fields:
            message += (
                f"; their json members have the fields: {', '.join(sorted(self.json_fields))}"
            )
        return message


def shard_summaries(reasons_by_shard: dict[str, Counter[str]], most: int = 3) -> list[str]:
    """One line per shard: its skip count and its `most` commonest reasons, counted."""
    lines = []
    for url, reasons in reasons_by_shard.items():
        counts = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(most))
        lines.append(f"shard {url}: {sum(reasons.values())} sample(s) skipped: {counts}")
    return lines


class ShardSkips:
    """Skips counted per shard and reason, for one summary line per shard at the end of
    an ordered pass (an eval), instead of a warning per sample."""

    def __init__(self) -> None:
        self.by_shard: dict[str, Counter[str]] = {}

    def add(self, skipped: Skipped) -> None:
        self.by_shard.setdefault(skipped.url, Counter())[skipped.reason] += 1

    @property
    def total(self) -> int:
        return sum(sum(reasons.values()) for reasons in self.by_shard.values())

    def lines(self) -> list[str]:
        return shard_summaries(self.by_shard)


def _json_fields(data) -> list[str]:
    try:
        value = json.loads(data)
    except (ValueError, TypeError):
        return []
    return [str(k) for k in value] if isinstance(value, dict) else []
