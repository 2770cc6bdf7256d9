"""One sample's shared transcript, and how each model sees it.

Text is the only thing that passes between the models. Each model keeps its own token ids: its own
spans as the exact ids it sampled, the other model's spans encoded from text with its own tokenizer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tessy.backends import Backend, Session, Span
from tessy.profiles import Profile, Renderer
from tessy.roles import STUDENT, TEACHER, other


@dataclass
class Party:
    """One model as one sample sees it."""

    backend: Backend
    profile: Profile
    session: Session
    # How the role's prompts are rendered: a side prompt of this model (tessy/engine/methods.py) is
    # rendered as the sample's own prompt was (profile, tokenizer, chat template arguments).
    renderer: Renderer | None = None


@dataclass
class Transcript:
    id: str
    messages: list[dict]
    parties: dict[str, Party]
    segments: list[dict] = field(default_factory=list)
    rounds: int = 0
    switches: int = 0
    forced_progress: int = 0
    generated_tokens: dict[str, int] = field(default_factory=lambda: {STUDENT: 0, TEACHER: 0})
    stop_reason: str | None = None
    predictors: dict[str, str] = field(default_factory=dict)  # role -> name of its boundary predictor
    cuts: list[dict] = field(default_factory=list)  # every cut: round, role, predictor
    method_stats: dict = field(default_factory=dict)  # a baseline's own numbers (tessy/engine/methods.py), into stats
    started: float = field(default_factory=time.perf_counter)

    # --- what the loop reads ------------------------------------------------------------------
    def tokens(self, part: str, source: str | None = None) -> int:
        return sum(s["n_tokens"] for s in self.segments if s["part"] == part and source in (None, s["source"]))

    def text(self, part: str) -> str:
        return "".join(s["text"] for s in self.segments if s["part"] == part)

    def tail(self, part: str, n_chars: int) -> str:
        """The last `n_chars` characters of `text(part)`, without joining the whole transcript."""
        pieces, size = [], 0
        for seg in reversed(self.segments):
            if seg["part"] == part:
                pieces.append(seg["text"])
                size += len(seg["text"])
                if size >= n_chars:
                    break
        return "".join(reversed(pieces))[-n_chars:] if n_chars > 0 else ""

    def close_marker(self, role: str) -> str:
        return self.parties[role].profile.think_close

    # --- what the loop does -------------------------------------------------------------------
    def accept(self, role: str, span: Span, n_tokens: int, part: str = "think") -> str:
        """Keep the first `n_tokens` of `role`'s own span, roll back the rest, and hand the kept
        text to the other model (while thinking). Returns the kept text."""
        me = self.parties[role]
        self.generated_tokens[role] += len(span.ids)
        me.backend.rollback(me.session, len(span.ids) - n_tokens)
        text = span.text_of(n_tokens)
        peer = self.parties.get(other(role))  # a baseline's side transcript may hold one model only
        if part == "think" and text and peer is not None:
            peer.backend.extend(peer.session, text)
        if not text:
            return text
        last = self.segments[-1] if self.segments else None
        if last and last["source"] == role and last["part"] == part:
            last["text"] += text
            last["n_tokens"] += n_tokens
        else:
            self.segments.append({"source": role, "part": part, "text": text, "n_tokens": n_tokens})
        return text

    def close_thinking(self, reason: str, writer: str = STUDENT) -> None:
        """End the thinking: the answer's writer sees its own think-close marker and answer opening."""
        self.stop_reason = reason
        party = self.parties[writer]
        thinking = self.text("think")
        glue = "" if thinking.endswith("\n") else "\n"
        party.backend.extend(party.session, glue + party.profile.think_close + party.profile.answer_open)

    def release(self) -> None:
        for party in self.parties.values():
            party.backend.release(party.session)

    # --- the output record --------------------------------------------------------------------
    def record(self, method: str, config_hash: str) -> dict:
        thinking, answer = self.text("think"), self.text("answer")
        think_tokens = self.tokens("think")
        teacher_tokens = self.tokens("think", TEACHER)
        student_profile = self.parties[STUDENT].profile
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return {
            "id": self.id,
            "prompt": users[-1] if users else "",
            "messages": [*self.messages, {"role": "assistant", "content": student_profile.response(thinking, answer)}],
            "segments": self.segments,
            "answer": answer.strip(),
            "method": method,
            "stats": {
                # Token counts are each source model's own tokens.
                "teacher_token_share": teacher_tokens / think_tokens if think_tokens else 0.0,
                "switches": self.switches,
                "rounds": self.rounds,
                "think_tokens": think_tokens,
                "answer_tokens": self.tokens("answer"),
                "generated_tokens": dict(self.generated_tokens),
                "forced_progress": self.forced_progress,
                "predictors": dict(self.predictors),
                "cuts": self.cuts,
                "stop_reason": self.stop_reason,
                "wall_s": round(time.perf_counter() - self.started, 3),
                **self.method_stats,
            },
            "config_hash": config_hash,
        }
