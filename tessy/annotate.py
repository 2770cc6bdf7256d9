"""`tessy annotate`: thinking segments and their style spans, the training data of B_S and B_T.

Paper, section 2.2 ("Generation Rollback"): random segments of thinking text from each model are
annotated by the teacher with the prompt of Table 2; the predictors are trained on them. Here the
segments come from a JSONL of records (synth records or other generations) or are sampled fresh
from a model, and the annotator is an LLM through any backend, or the lexicon for weak labels.

One output line per segment, also the format `tessy predictor eval` reads:
    {"id", "source": "student"|"teacher", "text", "style_spans": [[start, end], ...], "annotator",
     "doc", "context", "unfound"}
Offsets are characters, `end` exclusive. `doc` names the text the window was cut from (training
holds out whole docs), `context` is the text just before the window, `unfound` lists the
annotator's spans that could not be aligned (reported, never guessed).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tessy.backends import failed
from tessy.roles import STUDENT, TEACHER
from tessy.segments import Segment, read_segments  # noqa: F401  (read_segments: the reader of what annotate writes)

# Table 2 of the paper, verbatim (the paper's rendering lost its line breaks; they are restored).
ANNOTATION_PROMPT = """You are a text analysis expert.
Task: Extract all spans of text that are transitional, filler, or tone-setting phrases.
What to extract:
• Include phrases or sentences that:
– Express hesitation, tone, or attitude (e.g., “well”, “okay”, “so”, “let’s see”, “I think”)
– Indicate transition or setup (e.g., “to begin with”, “in this case”, “for example”, “but if”)
– Serve as narration or connection, not analysis
• Do not include:
– Actual reasoning, deduction, or explanation
– Code or formula descriptions
– Problem-solving steps
Output format (STRICT JSON):
• Return a JSON array of strings, e.g.: ["<span 1>", "<span 2>", ...]
• Rules:
1. Each span must be copied verbatim from the original text.
2. Preserve order of appearance.
3. If there are none, return an empty list: []
4. Output only the JSON array — no explanation or extra text.
<input_text>{think_text}</input_text>"""

# Where the parser stops looking: an annotator that rambles must not cost quadratic time.
MAX_ARRAY_CANDIDATES = 200


def annotation_messages(think_text: str) -> list[dict]:
    """The chat the annotator sees: Table 2's prompt as one user message."""
    return [{"role": "user", "content": ANNOTATION_PROMPT.replace("{think_text}", think_text)}]


# --- parsing the annotator's answer ----------------------------------------------------------------
class AnnotationParseError(ValueError):
    pass


def parse_spans(answer: str) -> list[str]:
    """The JSON array of strings in an annotator's answer.

    Accepts the array alone, inside a code fence, or with text around it; when several arrays of
    strings appear (a thinking model drafts before it answers), the last one wins. Raises
    `AnnotationParseError` when there is none: empty answers, prose, a bare string, arrays of
    non-strings (nested lists) and arrays cut off by a token limit.
    """
    if not answer or not answer.strip():
        raise AnnotationParseError("empty answer")
    decoder = json.JSONDecoder()
    found, last_error, tries, pos = None, "no JSON array in the answer", 0, 0
    while tries < MAX_ARRAY_CANDIDATES:
        start = answer.find("[", pos)
        if start == -1:
            break
        tries += 1
        try:
            value, end = decoder.raw_decode(answer, start)
        except (json.JSONDecodeError, RecursionError) as e:
            last_error = f"invalid JSON at char {start}: {getattr(e, 'msg', 'nested too deep')}"
            pos = start + 1
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            found = value
        else:
            last_error = "a JSON array whose items are not all strings"
        pos = end  # never re-read the inside of a decoded array as a new candidate
    if found is None:
        raise AnnotationParseError(last_error)
    return found


# --- aligning spans to character offsets --------------------------------------------------------------
def _tolerant_pattern(phrase: str) -> re.Pattern | None:
    words = phrase.split()
    if not words:
        return None
    return re.compile(r"\s+".join(re.escape(w) for w in words))


def align_spans(text: str, phrases: list[str]) -> tuple[list[tuple[int, int]], list[str]]:
    """Character spans of `phrases` in `text`; returns (spans, unfound phrases).

    The annotator copies spans verbatim and in order, so each phrase is searched from the end of
    the previous match: a repeated phrase takes its next occurrence. An exact match comes first,
    then one tolerant of whitespace (any run of whitespace matches any other). A phrase found
    nowhere after the cursor is reported as unfound, never placed by guess.
    """
    spans, unfound, cursor = [], [], 0
    for phrase in phrases:
        core = phrase.strip()
        if not core:
            unfound.append(phrase)
            continue
        start = text.find(core, cursor)
        if start != -1:
            end = start + len(core)
        else:
            pattern = _tolerant_pattern(core)
            match = pattern.search(text, cursor) if pattern else None
            if match is None:
                unfound.append(phrase)
                continue
            start, end = match.span()
        spans.append((start, end))
        cursor = end
    return merge_spans(spans), unfound


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with overlapping or touching spans joined."""
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


# --- where segments come from ------------------------------------------------------------------------
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)


def thinking_texts(records: list[dict], source: str | None = None) -> list[tuple[str, str, str]]:
    """(doc id, source, thinking text) from records.

    A synth record gives each of its thinking segments with the model that wrote it. Any other
    record gives its `thinking`, or the `<think>` part of its assistant message, with its own
    `source` field, else `source` (the caller's --source).
    """
    out = []
    for i, r in enumerate(records):
        rid = str(r.get("id", i))
        if isinstance(r.get("segments"), list):
            for j, seg in enumerate(r["segments"]):
                if seg.get("part", "think") == "think" and seg.get("text", "").strip():
                    out.append((f"{rid}/{j}", seg["source"], seg["text"]))
            continue
        role = r.get("source") or source
        if role not in (STUDENT, TEACHER):
            raise ValueError(f"record {rid}: no `source` field; say which model wrote it with --source student|teacher")
        text = r.get("thinking")
        if text is None:
            reply = next((m["content"] for m in reversed(r.get("messages", [])) if m.get("role") == "assistant"), "")
            found = _THINK.search(reply)
            text = found.group(1) if found else ""
        if text.strip():
            out.append((rid, role, text))
    return out


def sample_windows(docs: list[tuple[str, str, str]], n: int, min_words: int = 8, max_words: int = 48,
                   context_chars: int = 200, seed: int = 0) -> list[Segment]:
    """`n` random windows of whole words (section 2.2: the predictors read short inputs, about a turn
    of k tokens), spread evenly over `docs`. Each window keeps its doc and left context."""
    rng = random.Random(seed)
    words = [(doc, role, text, [m.span() for m in re.finditer(r"\S+", text)]) for doc, role, text in docs]
    words = [w for w in words if w[3]]
    if not words:
        return []
    out = []
    for i in range(n):
        doc, role, text, spans = words[i % len(words)] if i < len(words) else rng.choice(words)
        size = rng.randint(min(min_words, len(spans)), min(max_words, len(spans)))
        first = rng.randint(0, len(spans) - size)
        start, end = spans[first][0], spans[first + size - 1][1]
        out.append(Segment(id=f"seg{i}", source=role, text=text[start:end], doc=doc,
                           context=text[max(0, start - context_chars):start]))
    return out


def sample_thinking(backend, profile, prompts: list, max_tokens: int, batch_size: int = 8) -> list[str]:
    """Fresh thinking text from one model: each prompt rendered up to the opened thinking by the
    model's profile, then up to `max_tokens` tokens, cut at the think-close marker."""
    from tessy.profiles import render_prompt

    texts = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        sessions = []
        for p in chunk:
            text, used_template = render_prompt(profile, backend.tokenizer, list(p.messages))
            sessions.append(backend.start(text, add_special_tokens=not used_template, key=f"{p.id}/think"))
        spans = backend.generate(sessions, [max_tokens] * len(chunk), [(profile.think_close,)] * len(chunk))
        for s, span in zip(sessions, spans):
            backend.release(s)
            # A row a server failed for good gives no text (its prompt is simply not sampled).
            texts.append(span.text.split(profile.think_close)[0] if hasattr(span, "text") else "")
    return texts


# --- annotators -----------------------------------------------------------------------------------------
def annotate_lexicon(segments: list[Segment], predictor) -> None:
    """Weak labels: the lexicon's style spans."""
    for seg, spans in zip(segments, predictor.style_spans([s.text for s in segments])):
        seg.style_spans, seg.annotator = merge_spans(spans), predictor.name


@dataclass
class LLMReport:
    parse_failures: int = 0  # answers that held no JSON array of strings (each retry counts)
    failed: list[dict] = field(default_factory=list)  # segments still failing after all retries
    spans: int = 0
    unfound: int = 0


def annotate_llm(segments: list[Segment], ask: Callable[[list[list[dict]]], list], name: str, retries: int = 2,
                 batch_size: int = 8, progress: Callable[[int], None] | None = None) -> tuple[list[Segment], LLMReport]:
    """Annotate with an LLM: Table 2's prompt as a chat message, `batch_size` chats per `ask` call.

    `ask(chats)` returns one answer per chat: its text, or an exception where the request failed
    (see `backend_asker`, or `ChatClient.complete` for an OpenAI-compatible chat endpoint). An
    answer without a valid array is a recorded failure and is asked again, up to `retries` more
    times (sampling with temperature > 0 gives a new answer). Returns (annotated segments, report);
    segments that failed every attempt are left out and listed in the report.
    """
    report = LLMReport()
    done: list[Segment] = []
    errors: dict[str, list[str]] = {s.id: [] for s in segments}
    todo = list(segments)
    for _attempt in range(retries + 1):
        if not todo:
            break
        again = []
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            answers = ask([annotation_messages(s.text) for s in chunk])
            for seg, answer in zip(chunk, answers):
                try:
                    if failed(answer):
                        raise AnnotationParseError(f"request failed: {answer}")
                    phrases = parse_spans(answer)
                except AnnotationParseError as e:
                    report.parse_failures += 1
                    errors[seg.id].append(f"{e}: {str(answer)[:200]!r}")
                    again.append(seg)
                    continue
                seg.style_spans, seg.unfound = align_spans(seg.text, phrases)
                seg.annotator = name
                report.spans += len(phrases) - len(seg.unfound)
                report.unfound += len(seg.unfound)
                done.append(seg)
                if progress:
                    progress(1)
        todo = again
    report.failed = [{"id": s.id, "source": s.source, "text": s.text, "errors": errors[s.id]} for s in todo]
    order = {s.id: i for i, s in enumerate(segments)}
    return sorted(done, key=lambda s: order[s.id]), report


def backend_asker(backend, max_new_tokens: int) -> Callable[[list[list[dict]]], list]:
    """`ask` for `annotate_llm` through any backend (see `generate_answers`)."""
    return lambda chats: generate_answers(backend, chats, max_new_tokens)


def generate_answers(backend, chats: list[list[dict]], max_new_tokens: int) -> list:
    """One reply per chat, batched in one backend call (chat template, else a plain rendering);
    a row the backend failed for good keeps its error."""
    tokenizer = backend.tokenizer
    sessions = []
    for i, messages in enumerate(chats):
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            sessions.append(backend.start(prompt, add_special_tokens=False, key=f"chat{i}"))
        else:
            sessions.append(backend.start(messages[-1]["content"] + "\n\n", add_special_tokens=True, key=f"chat{i}"))
    spans = backend.generate(sessions, [max_new_tokens] * len(chats), [()] * len(chats))
    for s in sessions:
        backend.release(s)
    return [span if failed(span) else span.text for span in spans]


# --- the command ------------------------------------------------------------------------------------------
@dataclass
class AnnotateJob:
    out: str = field(metadata={"help": "annotated segments JSONL (failures go to OUT.failed.jsonl)"})
    records: list[str] = field(default_factory=list, metadata={"help": "JSONL files to cut segments from"})
    sample: list[str] = field(default_factory=list, metadata={"help": "roles to sample fresh thinking from"})
    prompts: str | None = field(default=None, metadata={"help": "prompts JSONL for --sample"})
    source: str | None = field(default=None, metadata={"choices": ("student", "teacher"),
                                                       "help": "who wrote --records lines without a `source`"})
    config: str | None = field(default=None, metadata={
        "help": "synth config naming the student and teacher (default: the embedded models)"})
    annotator: str = field(default="teacher", metadata={
        "choices": ("teacher", "student", "lexicon"),
        "help": "teacher | student (an LLM with the Table 2 prompt) | lexicon"})
    n: int = field(default=1000, metadata={"min": 1, "help": "segments per source (paper: 100k)"})
    min_words: int = field(default=8, metadata={"min": 1, "help": "shortest segment, in words"})
    max_words: int = field(default=48, metadata={"min": 1, "help": "longest segment, in words"})
    context_chars: int = field(default=200, metadata={"min": 0, "help": "text before each window kept as its context"})
    sample_tokens: int = field(default=256, metadata={"min": 1, "help": "thinking tokens per prompt for --sample"})
    retries: int = field(default=2, metadata={"min": 0, "help": "re-ask an annotator whose answer is not a JSON array"})
    max_new_tokens: int = field(default=256, metadata={"min": 1, "help": "budget of each annotator answer"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "prompts per backend call"})
    seed: int = field(default=0, metadata={"help": "window sampling seed"})


def run_annotate(job: AnnotateJob, console=None) -> dict:
    """Collect thinking text, cut `n` windows per source, annotate them, write the JSONL; return
    the summary (also printed when `console` is given)."""
    from pathlib import Path

    from tessy.config import load_config

    say = console.print if console is not None else (lambda *a, **k: None)
    config = load_config(job.config)
    opened: list = []  # the backends and clients this run made; closed when it ends, however it ends
    backends: dict = {}

    def backend(role):
        if role not in backends:
            from tessy.backends import make_backend

            say(f"loading the {role}: {getattr(config, role).model}")
            backends[role] = make_backend(getattr(config, role), role)
            opened.append(backends[role])
        return backends[role]

    try:
        segments, annotated, report = _segments_and_labels(job, config, backend, say, console, opened)
    finally:
        for thing in opened:
            thing.close()

    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in annotated), encoding="utf-8")
    failed_path = out.with_name(out.stem + ".failed.jsonl")
    if report.failed:
        failed_path.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in report.failed),
                               encoding="utf-8")
    chars = sum(len(s.text) for s in annotated)
    style = sum(e - b for s in annotated for b, e in s.style_spans)
    summary = {
        "segments": len(segments),
        "annotated": len(annotated),
        "by_source": {r: sum(s.source == r for s in annotated) for r in (STUDENT, TEACHER)},
        "annotator": job.annotator,
        "parse_failures": report.parse_failures,
        "failed_after_retries": len(report.failed),
        "spans_aligned": report.spans if job.annotator != "lexicon" else sum(len(s.style_spans) for s in annotated),
        "spans_unfound": report.unfound,
        "style_char_share": round(style / chars, 3) if chars else 0.0,
        "out": str(out),
        "failed_out": str(failed_path) if report.failed else None,
    }
    if console is not None:
        from rich.table import Table

        table = Table(title="tessy annotate", show_header=False)
        for key, value in summary.items():
            table.add_row(key.replace("_", " "), str(value))
        console.print(table)
    return summary


def _segments_and_labels(job: AnnotateJob, config, backend: Callable, say: Callable, console, opened: list):
    """The windows of thinking text and their labels: `backend(role)` opens a model on first use;
    whatever this opens besides goes into `opened`."""
    from rich.progress import Progress

    from tessy.predictors.lexicon import LexiconPredictor
    from tessy.records import read_records

    docs: list[tuple[str, str, str]] = []
    for path in job.records:
        docs.extend(thinking_texts(read_records(path), job.source))
    if job.sample:
        from tessy.profiles import get_profile
        from tessy.prompts import read_prompts

        if not job.prompts:
            raise ValueError("--sample needs --prompts")
        prompts = read_prompts(job.prompts)
        for role in job.sample:
            say(f"sampling {len(prompts)} thinkings of up to {job.sample_tokens} tokens from the {role}")
            profile = get_profile(getattr(config, role).profile, config.profiles)
            texts = sample_thinking(backend(role), profile, prompts, job.sample_tokens, job.batch_size)
            docs.extend((f"{role}/{p.id}", role, t) for p, t in zip(prompts, texts))
    if not docs:
        raise ValueError("no thinking text: give --records and/or --sample with --prompts")

    segments: list[Segment] = []
    for role in (STUDENT, TEACHER):
        mine = [d for d in docs if d[1] == role]
        for seg in sample_windows(mine, job.n if mine else 0, job.min_words, job.max_words, job.context_chars,
                                  job.seed):
            seg.id = f"{role}-{seg.id[3:]}"
            segments.append(seg)
    say(f"{len(segments)} segments from {len(docs)} thinking texts; annotator: {job.annotator}")

    report = LLMReport()
    if job.annotator == "lexicon":
        annotate_lexicon(segments, LexiconPredictor())
        annotated = segments
    elif job.annotator in (STUDENT, TEACHER):
        model = getattr(config, job.annotator)
        name = f"{job.annotator}:{model.model}"
        if model.backend == "openai":
            # A server's chat endpoint applies the model's own template (section 2.2: the teacher annotates).
            from tessy.backends.openai import ChatClient

            client = ChatClient(model.urls, model=model.model, api_key_env=model.api_key_env, timeout_s=model.timeout_s,
                                max_retries=model.max_retries, concurrency=model.concurrency,
                                temperature=model.temperature, max_tokens=job.max_new_tokens, seed=model.seed)
            opened.append(client)
            ask = client.complete
        else:
            ask = backend_asker(backend(job.annotator), job.max_new_tokens)
        with Progress(console=console, disable=console is None) as bar:
            task = bar.add_task("annotate", total=len(segments))
            annotated, report = annotate_llm(segments, ask, name, job.retries, job.batch_size,
                                             progress=lambda n: bar.advance(task, n))
    else:
        raise ValueError(f"unknown annotator {job.annotator!r}: use lexicon, teacher or student")

    return segments, annotated, report
