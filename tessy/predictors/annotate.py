"""`tessy annotate`: thinking segments and their style spans, the training data of B_S and B_T.

Paper, section 2.2 ("Generation Rollback"): random segments of thinking text from each model are
annotated by the teacher with the prompt of Table 2; the predictors are trained on them. Here the
segments come from a JSONL of records (synth records, chat records, the release's `dialogs` records,
gpt-oss output) or are sampled fresh from a model, and the annotator is an LLM through any backend
(the teacher, the student, or the config's `annotator:` section), or the lexicon for weak labels.
Each step has the authors' release (`Boundary_Predictor/annotator.py`) as an option beside tessy's
own default:

- windows: `--window-rule words` cuts N windows per source of 8..48 whitespace-separated words,
  with context; `pieces` cuts `--windows-per-response` (100) windows of `--window-pieces` (60)
  pieces of `text.split(' ')` from each response, skips shorter responses, keeps at most N per
  source (10000), with `--seed 222`;
- source text: `--sample` writes whole thinkings with `--sample-tokens` and its own sampling
  (`--sample-temperature/--sample-top-p/--sample-top-k`; the release: 0.95/0.8/20);
- annotator: `--annotator config` is the config's `annotator:` section (the release: Qwen3-32B,
  `chat_template_kwargs: {enable_thinking: false}`, 0.7/0.8/20, max_tokens 32768);
- parsing: `--parse tolerant` takes the last JSON array, aligns it tolerant of whitespace and
  reports unfound spans; `strict` needs the whole answer to be a JSON list of strings, each found
  verbatim and in order, or the window fails;
- prompt: `--prompt-file` (Table 2 by default);
- output: `--out-format tessy`, or `release`: `{"id_ddm", "think_text", "pred_result": [{"span",
  "start", "end"}]}`.

One tessy output line per segment, also the format `tessy predictor eval` reads (tessy/predictors/segments.py
reads both formats):
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
from tessy.predictors.segments import (  # noqa: F401  (read_segments: the reader)
    FORMATS,
    Segment,
    read_segments,
    segment_line,
)
from tessy.roles import STUDENT, TEACHER

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


PLACEHOLDER = "{think_text}"


def annotation_messages(think_text: str, prompt: str = ANNOTATION_PROMPT) -> list[dict]:
    """The chat the annotator sees: the prompt (Table 2's by default) as one user message, the
    window in place of its `{think_text}`."""
    return [{"role": "user", "content": prompt.replace(PLACEHOLDER, think_text)}]


def read_prompt(path) -> str:
    """An annotation prompt from a file, kept verbatim (line breaks and all); it must hold the
    `{think_text}` placeholder, where each window goes."""
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    if PLACEHOLDER not in text:
        raise ValueError(f"{path}: an annotation prompt needs the placeholder {PLACEHOLDER}, where each window goes")
    return text


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


def parse_strict(answer: str, text: str) -> list[tuple[int, int]]:
    """The release's rule (`parse_and_locate_spans` in its annotator.py): the whole answer must be
    JSON (`json.loads`: surrounding whitespace is allowed, a code fence or a word of prose is not),
    a list of non-empty strings, each found verbatim in `text` after the end of the previous one.
    Returns their character spans in the annotator's order, unmerged (touching spans stay two);
    raises `AnnotationParseError` where any of it fails, and the window is not used.
    """
    try:
        value = json.loads(answer)
    except (json.JSONDecodeError, RecursionError, TypeError) as e:
        raise AnnotationParseError(f"not JSON: {getattr(e, 'msg', e)}") from None
    if not isinstance(value, list):
        raise AnnotationParseError(f"a JSON {type(value).__name__}, not a list")
    spans, cursor = [], 0
    for phrase in value:
        if not isinstance(phrase, str) or not phrase:
            raise AnnotationParseError(f"an item that is not a non-empty string: {phrase!r}")
        start = text.find(phrase, cursor)
        if start == -1:
            raise AnnotationParseError(f"span {phrase[:80]!r} not found verbatim after char {cursor}")
        cursor = start + len(phrase)
        spans.append((start, cursor))
    return spans


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
# gpt-oss (harmony): the thinking is the analysis channel, one message or several.
_ANALYSIS = re.compile(r"<\|channel\|>analysis<\|message\|>(.*?)(?:<\|end\|>|<\|start\|>|<\|return\|>|$)", re.DOTALL)
# The same text with its special tokens dropped (vLLM's default detokenization): "analysis...assistantfinal...".
_ANALYSIS_BARE = re.compile(r"analysis(.*?)assistantfinal", re.DOTALL)


def reply_thinking(reply: str) -> str:
    """The thinking in a model's reply text: the `<think>` part (all of the reply before a lone
    `</think>`, for a template that opened the thinking itself), else gpt-oss's analysis channel
    (its messages joined by a blank line), else the analysis of a harmony reply whose special tokens
    were dropped (`analysis...assistantfinal...`); "" when the reply shows no thinking."""
    if "<think>" in reply:
        return _THINK.search(reply).group(1)
    if "</think>" in reply:
        return reply.split("</think>")[0]
    found = _ANALYSIS.findall(reply)
    if found:
        return "\n\n".join(found)
    bare = _ANALYSIS_BARE.match(reply.lstrip())
    return bare.group(1) if bare else ""


def _record_thinking(r: dict) -> str:
    """A record's thinking: its `thinking`, `reasoning_content` or `reasoning` field, else those of
    its last assistant message (`messages`, or the release's `dialogs`), else the thinking in that
    message's text or in the record's `content` (the release's records without dialogs)."""
    for key in ("thinking", "reasoning_content", "reasoning"):
        if isinstance(r.get(key), str) and r[key].strip():
            return r[key]
    chat = r.get("messages") or r.get("dialogs") or []
    reply = next((m for m in reversed(chat) if isinstance(m, dict) and m.get("role") == "assistant"), None)
    if reply is not None:
        for key in ("reasoning_content", "reasoning", "thinking"):
            if isinstance(reply.get(key), str) and reply[key].strip():
                return reply[key]
        return reply_thinking(reply.get("content") or "")
    return reply_thinking(r["content"]) if isinstance(r.get("content"), str) else ""


def thinking_texts(records: list[dict], source: str | None = None) -> list[tuple[str, str, str]]:
    """(doc id, source, thinking text) from records.

    A synth record gives each of its thinking segments with the model that wrote it. Any other
    record (a chat record, the release's `{"id_ddm", "dialogs": [user, assistant]}`, a server's
    answer with `reasoning_content`) gives its thinking (`_record_thinking`) with its own `source`
    field, else `source` (the caller's --source); its id is `id`, else `id_ddm`, else its line.
    """
    out = []
    for i, r in enumerate(records):
        rid = str(r.get("id", r.get("id_ddm", i)))
        if isinstance(r.get("segments"), list):
            for j, seg in enumerate(r["segments"]):
                if seg.get("part", "think") == "think" and seg.get("text", "").strip():
                    out.append((f"{rid}/{j}", seg["source"], seg["text"]))
            continue
        role = r.get("source") or source
        if role not in (STUDENT, TEACHER):
            raise ValueError(f"record {rid}: no `source` field; say which model wrote it with --source student|teacher")
        text = _record_thinking(r)
        if text.strip():
            out.append((rid, role, text))
    return out


WINDOW_RULES = ("words", "pieces")


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


def piece_windows(docs: list[tuple[str, str, str]], pieces: int = 60, per_response: int = 100,
                  cap: int | None = None, context_chars: int = 200, seed: int = 0) -> list[Segment]:
    """The release's windows (`construct_dataset` in its annotator.py), one model's docs at a time.

    Each doc's text, stripped, is split on single spaces (`text.split(' ')`: a newline stays inside
    its piece); a doc of fewer than `pieces` pieces gives nothing; any other gives `per_response`
    windows of `pieces` consecutive pieces, each starting at `randint(0, len - pieces)` (windows may
    overlap or repeat). Over `cap` windows in all, `cap` of them are drawn at random (in the order
    drawn). One `random.Random(seed)` makes every draw, in that order, so seed 222 draws what the
    release's `random.seed(222)` did. Each window keeps its doc and the stripped text before it as
    context.
    """
    rng = random.Random(seed)
    out = []
    for doc, role, text in docs:
        text = text.strip()
        parts = text.split(" ")
        if len(parts) < pieces:
            continue
        starts = [0]  # character offset of each piece
        for part in parts[:-1]:
            starts.append(starts[-1] + len(part) + 1)
        for _ in range(per_response):
            first = rng.randint(0, len(parts) - pieces)
            start = starts[first]
            end = starts[first + pieces - 1] + len(parts[first + pieces - 1])
            out.append(Segment(id="", source=role, text=text[start:end], doc=doc,
                               context=text[max(0, start - context_chars):start]))
    if cap is not None and len(out) > cap:
        out = rng.sample(out, cap)
    for i, seg in enumerate(out):
        seg.id = f"seg{i}"
    return out


def sample_thinking(backend, renderer, prompts: list, max_tokens: int, batch_size: int = 8) -> list[str]:
    """Fresh thinking text from one model: each prompt rendered up to the opened thinking by the
    model's `renderer` (tessy.profiles.Renderer: its profile, tokenizer and chat template arguments,
    such as gpt-oss's reasoning_effort), then written with the backend's sampling until the model
    closes the thinking or `max_tokens` are spent. Each prompt's draws come from the backend's seed
    and the prompt's id, so a rerun writes the same text. Returns one text per prompt, in order."""
    profile = renderer.profile
    texts = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        sessions = []
        for p in chunk:
            text, used_template = renderer.render(list(p.messages))
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


PARSES = ("tolerant", "strict")


def read_answer(answer: str, text: str, parse: str = "tolerant") -> tuple[list[tuple[int, int]], list[str], int]:
    """(style spans, unfound phrases, phrases placed) of one annotator answer about `text`, by the
    parse policy: `tolerant` (`parse_spans`, then `align_spans`: spans merged, unfound phrases
    reported) or `strict` (`parse_strict`: nothing is ever unfound, the window fails instead).
    Raises `AnnotationParseError` where the answer is not usable."""
    if parse == "strict":
        spans = parse_strict(answer, text)
        return spans, [], len(spans)
    if parse == "tolerant":
        phrases = parse_spans(answer)
        spans, unfound = align_spans(text, phrases)
        return spans, unfound, len(phrases) - len(unfound)
    raise ValueError(f"unknown parse policy {parse!r} (known: {', '.join(PARSES)})")


def annotate_llm(segments: list[Segment], ask: Callable[[list[list[dict]]], list], name: str, retries: int = 2,
                 batch_size: int = 8, progress: Callable[[int], None] | None = None, parse: str = "tolerant",
                 prompt: str = ANNOTATION_PROMPT) -> tuple[list[Segment], LLMReport]:
    """Annotate with an LLM: `prompt` (Table 2's by default) as a chat message, `batch_size` chats
    per `ask` call.

    `ask(chats)` returns one answer per chat: its text, or an exception where the request failed
    (see `backend_asker`, or `ChatClient.complete` for an OpenAI-compatible chat endpoint). An
    answer that `parse` cannot use (`read_answer`) is a recorded failure and is asked again, up to
    `retries` more times (sampling with temperature > 0 gives a new answer; `retries=0` with strict
    parsing is the release's rule: the window is dropped). Returns (annotated segments, report);
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
            answers = ask([annotation_messages(s.text, prompt) for s in chunk])
            for seg, answer in zip(chunk, answers):
                try:
                    if failed(answer):
                        raise AnnotationParseError(f"request failed: {answer}")
                    seg.style_spans, seg.unfound, placed = read_answer(answer, seg.text, parse)
                except AnnotationParseError as e:
                    report.parse_failures += 1
                    errors[seg.id].append(f"{e}: {str(answer)[:200]!r}")
                    again.append(seg)
                    continue
                seg.annotator = name
                report.spans += placed
                report.unfound += len(seg.unfound)
                done.append(seg)
                if progress:
                    progress(1)
        todo = again
    report.failed = [{"id": s.id, "source": s.source, "text": s.text, "errors": errors[s.id]} for s in todo]
    order = {s.id: i for i, s in enumerate(segments)}
    return sorted(done, key=lambda s: order[s.id]), report


def backend_asker(backend, max_new_tokens: int,
                  template_kwargs: dict | None = None) -> Callable[[list[list[dict]]], list]:
    """`ask` for `annotate_llm` through any backend (see `generate_answers`)."""
    return lambda chats: generate_answers(backend, chats, max_new_tokens, template_kwargs)


def generate_answers(backend, chats: list[list[dict]], max_new_tokens: int,
                     template_kwargs: dict | None = None) -> list:
    """One reply per chat, batched in one backend call (the chat template, given `template_kwargs`
    such as Qwen3's enable_thinking, else a plain rendering); a row the backend failed for good
    keeps its error."""
    tokenizer = backend.tokenizer
    sessions = []
    for i, messages in enumerate(chats):
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                   **(template_kwargs or {}))
            sessions.append(backend.start(prompt, add_special_tokens=False, key=f"chat{i}"))
        else:
            sessions.append(backend.start(messages[-1]["content"] + "\n\n", add_special_tokens=True, key=f"chat{i}"))
    spans = backend.generate(sessions, [max_new_tokens] * len(chats), [()] * len(chats))
    for s in sessions:
        backend.release(s)
    return [span if failed(span) else span.text for span in spans]


# --- the command ------------------------------------------------------------------------------------------
ANNOTATORS = ("teacher", "student", "config", "lexicon")


@dataclass
class AnnotateJob:
    out: str = field(metadata={"help": "annotated segments JSONL (failures go to OUT.failed.jsonl)"})
    records: list[str] = field(default_factory=list, metadata={"help": "JSONL files to cut segments from"})
    sample: list[str] = field(default_factory=list, metadata={"help": "roles to sample fresh thinking from"})
    prompts: str | None = field(default=None, metadata={"help": "prompts JSONL for --sample"})
    source: str | None = field(default=None, metadata={"choices": ("student", "teacher"),
                                                       "help": "who wrote --records lines without a `source`"})
    config: str | None = field(default=None, metadata={
        "help": "synth config naming the student, the teacher and an annotator: section (default: the embedded "
                "models)"})
    annotator: str = field(default="teacher", metadata={
        "choices": ANNOTATORS,
        "help": "teacher | student (that role's model with the annotation prompt) | config (the config's "
                "annotator: section, any model with its own sampling and chat_template_kwargs) | lexicon"})
    window_rule: str = field(default="words", metadata={
        "choices": WINDOW_RULES,
        "help": "words: N windows per source of --min-words..--max-words whole words; pieces (the authors' "
                "release): --windows-per-response windows of --window-pieces pieces of text.split(' ') from each "
                "response at least that long, at most N per source"})
    n: int = field(default=1000, metadata={
        "min": 1, "help": "windows per source: exactly N (words), at most N (pieces) (paper: 100k; the release: "
                          "10000)"})
    min_words: int = field(default=8, metadata={"min": 1, "help": "words rule: shortest window, in words"})
    max_words: int = field(default=48, metadata={"min": 1, "help": "words rule: longest window, in words"})
    window_pieces: int = field(default=60, metadata={
        "min": 1, "help": "pieces rule: space-separated pieces per window (the release: 60)"})
    windows_per_response: int = field(default=100, metadata={
        "min": 1, "help": "pieces rule: random windows cut from each response (the release: 100)"})
    context_chars: int = field(default=200, metadata={"min": 0, "help": "text before each window kept as its context"})
    sample_tokens: int = field(default=256, metadata={
        "min": 1, "help": "--sample: thinking budget per prompt; the thinking ends where the model closes it or "
                          "here (the release: the whole generation, up to 40768 tokens)"})
    sample_temperature: float | None = field(default=None, metadata={
        "min": 0, "help": "--sample: sampling temperature; default the role's (the release: 0.95)"})
    sample_top_p: float | None = field(default=None, metadata={
        "gt": 0, "max": 1, "help": "--sample: nucleus sampling; default the role's (the release: 0.8)"})
    sample_top_k: int | None = field(default=None, metadata={
        "min": 0, "help": "--sample: top-k, 0 off; default the role's (the release: 20)"})
    parse: str = field(default="tolerant", metadata={
        "choices": PARSES,
        "help": "tolerant: the last JSON array in the answer, whitespace-tolerant alignment, unfound spans "
                "reported; strict (the release): the whole answer a JSON list of strings, each found verbatim "
                "in order, else the window fails"})
    prompt_file: str | None = field(default=None, metadata={
        "help": "annotation prompt, verbatim, with {think_text} where the window goes (default: Table 2 of the "
                "paper)"})
    out_format: str = field(default="tessy", metadata={
        "choices": FORMATS,
        "help": "tessy: {id, source, text, style_spans, annotator, doc, context, unfound}; release: {id_ddm, "
                "think_text, pred_result: [{span, start, end}]}, as the authors' annotator.py writes"})
    retries: int = field(default=2, metadata={
        "min": 0, "help": "re-ask an annotator whose answer the parse policy refuses (the release: 0)"})
    max_new_tokens: int = field(default=256, metadata={
        "min": 1, "help": "budget of each teacher or student annotator answer (--annotator config: its max_tokens)"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "prompts per backend call"})
    seed: int = field(default=0, metadata={"help": "window sampling seed (the release: 222)"})


def sampling_model(model, job: AnnotateJob):
    """The role's config (`RoleConfig`) with --sample's own sampling where given (the role's elsewhere)."""
    import dataclasses

    given = {"temperature": job.sample_temperature, "top_p": job.sample_top_p, "top_k": job.sample_top_k}
    given = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(model, spec=dataclasses.replace(model.spec, **given)) if given else model


def run_annotate(job: AnnotateJob, console=None) -> dict:
    """Collect thinking text, cut windows per source, annotate them, write the JSONL (in
    `job.out_format`); return the summary (also printed when `console` is given)."""
    from pathlib import Path

    from tessy.config import load_config, load_recipe

    say = console.print if console is not None else (lambda *a, **k: None)
    config = load_config(job.config)
    annotator = load_recipe(job.config).annotator
    if job.annotator == "config" and annotator is None:
        raise ValueError("--annotator config needs an annotator: section in the --config file (a model entry like "
                         "student:, plus max_tokens)")
    prompt = read_prompt(job.prompt_file) if job.prompt_file else ANNOTATION_PROMPT
    opened: list = []  # the backends and clients this run made; closed when it ends, however it ends
    backends: dict = {}

    def backend(name, model=None):
        """The backend called `name` (a role, by default of that role's model entry), opened on first use."""
        if name not in backends:
            from tessy.backends import make_backend

            model = model or getattr(config, name)
            say(f"loading the {name}: {model.spec.model}")
            backends[name] = make_backend(model, name)
            opened.append(backends[name])
        return backends[name]

    try:
        segments, annotated, report = _segments_and_labels(job, config, backend, say, console, opened, prompt,
                                                           annotator)
    finally:
        for thing in opened:
            thing.close()

    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(segment_line(s, job.out_format), ensure_ascii=False) + "\n" for s in annotated),
                   encoding="utf-8")
    failed_path = out.with_name(out.stem + ".failed.jsonl")
    if report.failed:
        failed_path.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in report.failed),
                               encoding="utf-8")
    chars = sum(len(s.text) for s in annotated)
    style = sum(e - b for s in annotated for b, e in merge_spans(s.style_spans))
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
        "out_format": job.out_format,
        "failed_out": str(failed_path) if report.failed else None,
    }
    if console is not None:
        from rich.table import Table

        table = Table(title="tessy annotate", show_header=False)
        for key, value in summary.items():
            table.add_row(key.replace("_", " "), str(value))
        console.print(table)
    return summary


def _windows(job: AnnotateJob, docs: list[tuple[str, str, str]]) -> list[Segment]:
    """Each source's windows by `job.window_rule`, ids `student-0`, `teacher-0`, ..."""
    segments: list[Segment] = []
    for role in (STUDENT, TEACHER):
        mine = [d for d in docs if d[1] == role]
        if not mine:
            continue
        if job.window_rule == "pieces":
            cut = piece_windows(mine, job.window_pieces, job.windows_per_response, job.n, job.context_chars, job.seed)
        else:
            cut = sample_windows(mine, job.n, job.min_words, job.max_words, job.context_chars, job.seed)
        for seg in cut:
            seg.id = f"{role}-{seg.id[3:]}"
            segments.append(seg)
    return segments


def _annotator_ask(job: AnnotateJob, config, backend: Callable, opened: list,
                   annotator=None) -> tuple[Callable, str]:
    """(`ask` for `annotate_llm`, the annotator's name) of --annotator teacher, student or config
    (`annotator`: the config file's `annotator:` section, an `AnnotatorConfig`).

    The model entry's sampling and `chat_template_kwargs` go with every request: over the openai
    backend through the server's chat endpoint (which applies the model's own template), else
    through the tokenizer's chat template in this process."""
    if job.annotator in (STUDENT, TEACHER):
        model, budget, name = getattr(config, job.annotator), job.max_new_tokens, job.annotator
    elif job.annotator == "config":
        model, budget, name = annotator, annotator.max_tokens, "annotator"
    else:
        raise ValueError(f"unknown annotator {job.annotator!r}: use {', '.join(ANNOTATORS)}")
    spec = model.spec
    if spec.backend == "openai":
        from tessy.backends.openai import ChatClient

        client = ChatClient.from_config(spec, model.endpoint, budget)
        opened.append(client)
        return client.complete, f"{name}:{spec.model}"
    runner = backend(name, model)
    return backend_asker(runner, budget, spec.chat_template_kwargs), f"{name}:{spec.model}"


def _segments_and_labels(job: AnnotateJob, config, backend: Callable, say: Callable, console, opened: list,
                         prompt: str = ANNOTATION_PROMPT, annotator=None):
    """The windows of thinking text and their labels: `backend(name, model)` opens a model on first
    use; whatever this opens besides goes into `opened`."""
    from rich.progress import Progress

    from tessy.engine.records import read_records
    from tessy.predictors.lexicon import LexiconPredictor

    docs: list[tuple[str, str, str]] = []
    for path in job.records:
        docs.extend(thinking_texts(read_records(path), job.source))
    if job.sample:
        from tessy.prompts import read_prompts

        if not job.prompts:
            raise ValueError("--sample needs --prompts")
        prompts = read_prompts(job.prompts)
        for role in job.sample:
            model = getattr(config, role)
            sampler = sampling_model(model, job)
            say(f"sampling {len(prompts)} thinkings of up to {job.sample_tokens} tokens from the {role} (temperature "
                f"{sampler.spec.temperature}, top_p {sampler.spec.top_p}, top_k {sampler.spec.top_k})")
            runner = backend(role) if sampler is model else backend(f"{role} sampler", sampler)
            texts = sample_thinking(runner, model.renderer(runner.tokenizer, config.profiles), prompts,
                                    job.sample_tokens, job.batch_size)
            docs.extend((f"{role}/{p.id}", role, t) for p, t in zip(prompts, texts))
    if not docs:
        raise ValueError("no thinking text: give --records and/or --sample with --prompts")

    segments = _windows(job, docs)
    say(f"{len(segments)} segments from {len(docs)} thinking texts ({job.window_rule} rule); annotator: "
        f"{job.annotator}")

    report = LLMReport()
    if job.annotator == "lexicon":
        annotate_lexicon(segments, LexiconPredictor())
        return segments, segments, report
    ask, name = _annotator_ask(job, config, backend, opened, annotator)
    with Progress(console=console, disable=console is None) as bar:
        task = bar.add_task("annotate", total=len(segments))
        annotated, report = annotate_llm(segments, ask, name, job.retries, job.batch_size,
                                         progress=lambda n: bar.advance(task, n), parse=job.parse, prompt=prompt)
    return segments, annotated, report
