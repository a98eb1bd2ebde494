"""Budgets per peer: a token bucket for each (kind, peer id), so no peer can make us do a thing
more often than a rule allows. Sans-IO: the time is passed in."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("Budgets",)

# Buckets kept at most; past this, full (idle) buckets are forgotten: they hold no state.
MAX_BUCKETS = 4096


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Budgets:
    """Token buckets by key: ``burst`` at once, then one more per ``interval`` seconds; a
    ``cost`` above one spends that many tokens at once (bytes, for a byte budget)."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(
        self, kind: str, peer_id: str, now: float, burst: int, interval: float, cost: float = 1.0
    ) -> bool:
        """Spend ``cost`` tokens of ``peer_id``'s budget for ``kind``; False when fewer are left."""
        key = (kind, peer_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_idle(now, burst * interval)
            bucket = self._buckets[key] = _Bucket(float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + max(0.0, now - bucket.at) / interval)
        bucket.at = now
        if bucket.tokens < cost:
            return False
        bucket.tokens -= cost
        return True

    def _forget_idle(self, now: float, age: float) -> None:
        for key, bucket in list(self._buckets.items()):
            if now - bucket.at >= age:
                del self._buckets[key]
