"""One seed stream per sample.

Every request's seed comes from the role's configured seed, the sample's key (its id, its role, and
a candidate or repeat index where a sample writes more than once) and the position in the session:
- a retried or resumed request sends the same seed, so it samples the same;
- the same prompt under two ids, Teacher-Score's candidates and eval repeats all differ;
- a sample's text does not depend on which other samples share its batch or are in flight.

The numbers come from BLAKE2b of the parts, so they are stable across processes and Python
versions (unlike `hash()`).
"""

from __future__ import annotations

import hashlib

SEED_BITS = 31  # servers take a signed 32-bit seed (vLLM, llama.cpp)


def _digest(*parts) -> int:
    data = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def stream_seed(base: int | None, key: str) -> int | None:
    """The seed stream of one session: `base` is the role's configured seed (None: unseeded), `key`
    names the session, e.g. "p17/student" or "p17/student/candidate3"."""
    if base is None:
        return None
    return _digest("stream", base, key) % 2**SEED_BITS


def request_seed(stream: int | None, position: int) -> int | None:
    """The seed of the request that writes at `position` (the session's length in tokens)."""
    if stream is None:
        return None
    return _digest("request", stream, position) % 2**SEED_BITS


def uniform(stream: int, position: int) -> float:
    """A number in [0, 1) for the token sampled at `position`: the in-process backend's counter-based
    sampler, so a row samples the same whatever batch it is in."""
    return _digest("uniform", stream, position) / 2**64
