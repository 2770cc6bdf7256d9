"""Checking provenance on real backends: record what each model sampled, then check that the
record's segments are exactly (prefixes of) that text."""

from __future__ import annotations


class Recording:
    """Wraps a backend and remembers, per session, the text of every span its model sampled."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, sessions, max_new_tokens, stop, **watch):
        spans = self.inner.generate(sessions, max_new_tokens, stop, **watch)
        for s, span in zip(sessions, spans):
            s.sampled = getattr(s, "sampled", []) + [span.text]
        return spans

    def submit(self, session, max_new_tokens, stop, **watch):
        """The inner future's result, recorded before the scheduler sees it."""
        from concurrent.futures import Future

        out = Future()

        def record(inner):
            if inner.exception() is not None:
                out.set_exception(inner.exception())
                return
            span = inner.result()
            if hasattr(span, "text"):
                session.sampled = getattr(session, "sampled", []) + [span.text]
            out.set_result(span)

        self.inner.submit(session, max_new_tokens, stop, **watch).add_done_callback(record)
        return out


def splits_into_prefixes(kept: str, spans: list[str]) -> bool:
    """Can `kept` be read as a prefix of each sampled span, in order (any prefix length, even empty)?"""
    reachable = {0}
    for span in spans:
        after = set(reachable)
        for pos in reachable:
            n = 0
            while n < len(span) and pos + n < len(kept) and kept[pos + n] == span[n]:
                n += 1
                after.add(pos + n)
        reachable = after
    return len(kept) in reachable
