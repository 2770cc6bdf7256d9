"""Scripted generators: a backend whose model writes what the test says, one character per token.

They drive the real loop and scheduler, so the tests pin the control flow of Algorithm 1 without
model weights. (The real models are tested in test_real_models.py.)
"""

from __future__ import annotations

import dataclasses
from collections import deque

from tessy.backends import Session, Span, answered, span_from_ids
from tessy.engine.loop import LoopSettings, tessy_sample
from tessy.engine.scheduler import Scheduler
from tessy.engine.transcript import Party, Transcript
from tessy.predictors.lexicon import LexiconPredictor
from tessy.profiles import PLAIN
from tessy.roles import STUDENT, TEACHER

EOS = "<eos>"


class CharTokenizer:
    """One token per character; `name` makes two vocabularies differ."""

    eos_token_id = 0

    def __init__(self, name: str):
        self.name = name

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)

    def get_vocab(self):
        return {"vocabulary": self.name}


class ScriptedBackend:
    """Each call pops the next scripted text for the session (EOS when the text is `EOS`).

    `concurrent=True` makes the scheduler drive it with its event driver (one `submit` per request).
    It implements the whole `Backend` protocol: it does not stream (a subclass that takes watches sets
    `streams`), warm, count or throttle."""

    streams = False

    def __init__(self, script: list[str], vocab: str = "a", concurrent: bool = False):
        self.script = script
        self.tokenizer = CharTokenizer(vocab)
        self.concurrent = concurrent
        self.calls: list[int] = []  # batch size of every generate call
        self.requests: list[int] = []  # max_new_tokens of every request
        self.sampled: list[str] = []  # every text this model wrote

    def start(self, prompt, add_special_tokens=False, key="") -> Session:
        return Session(ids=self.tokenizer.encode(prompt), state=deque(self.script))

    def submit(self, session, max_new_tokens, stop):
        return answered(self.generate([session], [max_new_tokens], [stop])[0])

    def close(self):
        pass

    def warm(self, session):
        return None

    def server_counters(self):
        return None

    def throttling(self):
        return None

    def extend(self, session, text):
        session.ids.extend(self.tokenizer.encode(text))
        return len(text)

    def rollback(self, session, n):
        if n > 0:
            del session.ids[-n:]

    def release(self, session):
        pass

    def generate(self, sessions, max_new_tokens, stop) -> list[Span]:
        self.calls.append(len(sessions))
        self.requests.extend(max_new_tokens)
        spans = []
        for s, limit, stops in zip(sessions, max_new_tokens, stop):
            text = s.state.popleft() if s.state else EOS
            if text == EOS:
                spans.append(span_from_ids(self.tokenizer, [], "eos"))
                continue
            text, finish = text[:limit], "length"
            for marker in stops:
                if marker and marker in text:
                    text, finish = text[: text.index(marker) + len(marker)], "stop"
            self.sampled.append(text)
            ids = self.tokenizer.encode(text)
            s.ids.extend(ids)
            spans.append(span_from_ids(self.tokenizer, ids, finish))
        return spans


def loop_settings(same_vocab: bool = True, **settings) -> LoopSettings:
    """The default config's loop settings with k = 20 for both roles, changed by `settings`
    (`k` may be one number for both roles)."""
    from tessy.config import load_config

    if isinstance(settings.get("k"), int):
        settings["k"] = {STUDENT: settings["k"], TEACHER: settings["k"]}
    return dataclasses.replace(LoopSettings.of(load_config(k=20), same_vocab), **settings)


def run_scripted(student_script, teacher_script, n_samples=1, same_vocab=False, driver="ticks", predictor=None,
                 **settings):
    """Run the loop over scripted models (B_S and B_T: `predictor`, else the lexicon); return
    (transcripts, student, teacher)."""
    student = ScriptedBackend(student_script, "a")
    teacher = ScriptedBackend(teacher_script, "a" if same_vocab else "b")
    s = loop_settings(same_vocab, **settings)
    lexicon = predictor or LexiconPredictor()
    done: list[Transcript] = []

    def start(i):
        parties = {STUDENT: Party(student, PLAIN, student.start(f"q{i}")),
                   TEACHER: Party(teacher, PLAIN, teacher.start(f"q{i}"))}
        x = Transcript(f"s{i}", [{"role": "user", "content": f"q{i}"}], parties)
        return x, tessy_sample(x, s)

    Scheduler({STUDENT: student, TEACHER: teacher}, {STUDENT: lexicon, TEACHER: lexicon}, max_in_flight=n_samples,
              driver=driver, chunk_tokens=s.longest_turn()).run(
        (lambda i=i: start(i) for i in range(n_samples)), done.append
    )
    return done, student, teacher
