"""Skipped samples: one summary line per shard instead of a warning per sample, and a
sanity stop when most of the first samples cannot be used (a wrong `data.image_key`
or `data.text_key` makes every sample fail)."""

from __future__ import annotations

import json
import logging
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
    if not 0 <= max_skipped_fraction < 1:
        problems.append(
            f"data.max_skipped_fraction={max_skipped_fraction} must be in [0, 1): the "
            "fraction of the first data.sanity_samples that may be skipped"
        )
    if sanity_samples < 1:
        problems.append(f"data.sanity_samples={sanity_samples} must be at least 1")
    return problems


class SkipMonitor:
    """Counts the first `sanity_samples` samples' outcomes and raises `UnusableData` as
    soon as more than `max_fraction` of them are certain to be skipped; logs each
    shard's skips once, with counts per reason, when the skips move to another shard
    (or at `flush`)."""

    def __init__(self, max_fraction: float, sanity_samples: int, keys: str):
        self.limit = int(max_fraction * sanity_samples)
        self.window = sanity_samples
        self.keys = keys  # "data.image_key='jpg', data.text_key='txt'" for the message
        self.used = 0
        self.skipped = 0
        self.members: Counter[str] = Counter()
        self.json_fields: set[str] = set()
        self._shard: str | None = None
        self._reasons: Counter[str] = Counter()
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
        if skipped.url != self._shard:
            self.flush()
            self._shard = skipped.url
            log.warning(
                "skipping sample %r in %s: %s (this shard's further skips are summarised)",
                skipped.key, skipped.url, skipped.reason,
            )  # fmt: skip
        self._reasons[skipped.reason] += 1
        if self.checking:
            self.skipped += 1
            self._all_reasons[skipped.reason] += 1
            if self.skipped > self.limit:
                raise UnusableData(self._message())

    def flush(self) -> None:
        """Logs the current shard's skips, if any."""
        if self._shard is not None and self._reasons:
            counts = "; ".join(f"{n} x {reason}" for reason, n in self._reasons.most_common(3))
            total = sum(self._reasons.values())
            log.warning("shard %s: %d sample(s) skipped: %s", self._shard, total, counts)
        self._shard, self._reasons = None, Counter()

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


def _json_fields(data) -> list[str]:
    try:
        value = json.loads(data)
    except (ValueError, TypeError):
        return []
    return [str(k) for k in value] if isinstance(value, dict) else []
