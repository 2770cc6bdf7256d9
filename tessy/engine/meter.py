"""What a run shows while it goes and sums up at its end: kept tokens per second, tokens generated
per kept token, each role's prefix-cache hit rate, and, for the roles with a price
(`price_per_million_tokens`), the money spent so far and the projected total.

Tokens and money count every request the scheduler sent (its `RoleStats`), warm-ups and the requests
of samples that failed included, since an endpoint bills them all. Output tokens are the ones tessy
received; a streamed turn stopped at its cut may have cost the server a few more. Kept tokens are
the finished records'. The projection scales what was spent by the samples of this run over the
samples finished so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tessy.config import Price
from tessy.engine.scheduler import RoleStats
from tessy.roles import STUDENT, TEACHER


def role_cost(price: Price, stats: RoleStats) -> dict:
    """{"input_tokens", "cached_input_tokens", "output_tokens", "cost"} of one role's requests so far."""
    cached = min(stats.cached_tokens, stats.sent_prompt_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    cost = ((stats.sent_prompt_tokens - cached) * price.input + cached * cached_price
            + stats.tokens * price.output) / 1e6
    return {"input_tokens": stats.sent_prompt_tokens, "cached_input_tokens": cached,
            "output_tokens": stats.tokens, "cost": round(cost, 6)}


@dataclass
class Meter:
    total: int  # the samples this run has to finish
    prices: dict[str, Price | None]  # role -> its price, or None
    roles: dict[str, RoleStats]  # the scheduler's counters, read as they grow
    started: float = field(default_factory=time.perf_counter)
    finished: int = 0  # records and errors
    errors: int = 0
    kept: int = 0
    generated: int = 0

    def add(self, record: dict | None) -> None:
        """Count a finished sample: its record, or None for one that failed."""
        self.finished += 1
        if record is None:
            self.errors += 1
            return
        stats = record["stats"]
        self.kept += stats["think_tokens"] + stats["answer_tokens"]
        self.generated += sum(stats["generated_tokens"].values())

    def hit_rates(self) -> dict[str, float]:
        """Each role's prefix-cache hit rate, where its engine reports cached prompt tokens."""
        return {role: s.cached_tokens / s.prompt_tokens for role, s in self.roles.items() if s.prompt_tokens}

    def cost(self) -> dict | None:
        """{"spent", "projected", "roles": {role: role_cost}} for the roles with a price; None when no
        role has one."""
        priced = {role: role_cost(price, self.roles[role]) for role, price in self.prices.items() if price}
        if not priced:
            return None
        spent = sum(r["cost"] for r in priced.values())
        projected = spent * self.total / self.finished if self.finished else None
        return {"spent": round(spent, 6), "projected": None if projected is None else round(projected, 6),
                "roles": priced}

    def line(self) -> str:
        """The progress line's figures: `12.3 kept tok/s · 1.09 gen/kept · hit S 74% T 90% · spent 0.12 of ~1.40`."""
        parts = []
        if self.kept:
            parts.append(f"{self.kept / max(time.perf_counter() - self.started, 1e-9):.1f} kept tok/s")
            parts.append(f"{self.generated / self.kept:.2f} gen/kept")
        hits = self.hit_rates()
        if hits:
            names = {STUDENT: "S", TEACHER: "T"}
            parts.append("hit " + " ".join(f"{names[role]} {rate:.0%}" for role, rate in hits.items()))
        cost = self.cost()
        if cost:
            parts.append(f"spent {cost['spent']:.4g}" + (f" of ~{cost['projected']:.4g}" if cost["projected"] else ""))
        if self.errors:
            parts.append(f"[red]{self.errors} failed[/]")
        return " · ".join(parts)
