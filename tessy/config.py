"""Typed run configuration. A run's config file is also its record: it is saved beside the output
and its hash goes into every record."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tessy.models import STUDENT_DEFAULT, TEACHER_DEFAULT
from tessy.profiles import BUILTIN, ProfileSpec, Renderer, get_profile
from tessy.roles import ROLES
from tessy.typed import ConfigError, flat_keys, load, read_yaml, to_flat

# The values a config accepts; the modules that act on them take them from here.
BACKENDS = ("hf", "openai", "vllm")
# The paper's section 3.4: TESSY and its baselines (tessy/engine/methods.py).
METHODS = ("tessy", "student-only", "teacher-only", "teacher-mix", "teacher-answer", "teacher-think",
           "teacher-reference", "teacher-score")
# How a cut span ends a word (tessy/engine/loop.py, `kept_tokens`).
HANDOVERS = ("drop-partial-word", "complete-word")
# Who waits for whom (tessy/engine/scheduler.py).
DRIVERS = ("auto", "events", "ticks")


@dataclass
class Price:
    """A hosted endpoint's price in money per million tokens (the currency is the user's): `input` for
    prompt tokens, `output` for generated ones, and `cached_input` for prompt tokens the server
    reports as read from its prefix cache (null: charged as `input`)."""

    input: float = field(metadata={"min": 0, "help": "per million prompt tokens"})
    output: float = field(metadata={"min": 0, "help": "per million generated tokens"})
    cached_input: float | None = field(
        default=None, metadata={"min": 0, "help": "per million cached prompt tokens; null is the input price"})


@dataclass
class ModelSpec:
    """What a role's model is and how it samples: everything that decides the text it writes."""

    model: str = field(metadata={"help": "embedded default name, a .gguf file, or a Hugging Face model directory"})
    profile: str = field(
        default="plain",
        metadata={"help": "qwen3 | deepseek-r1 | gpt-oss | plain | a name under profiles:"},
    )
    backend: str = field(
        default="hf",
        metadata={"choices": BACKENDS, "help": "hf (transformers in this process) | openai (OpenAI-compatible "
                                               "servers at `urls`) | vllm (vllm.LLM in this process)"},
    )
    temperature: float = field(
        default=0.6,
        metadata={"min": 0, "help": "sampling temperature; 0 is greedy (paper: 0.6)"},
    )
    top_p: float = field(default=1.0, metadata={"gt": 0, "max": 1, "help": "nucleus sampling"})
    top_k: int = field(
        default=0,
        metadata={"min": 0, "help": "sample among the k likeliest tokens; 0 is off (the authors' release: 20)"},
    )
    min_p: float = field(
        default=0.0,
        metadata={"min": 0, "max": 1, "help": "drop tokens less likely than min_p times the likeliest; 0 is off"},
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={"gt": 0, "help": "divides the logits of tokens already in the context (as transformers and vLLM "
                                   "do); 1 is off"},
    )
    seed: int | None = field(default=0, metadata={"help": "seed of this role's sampler"})
    dtype: str = field(default="float32", metadata={"help": "torch dtype of the weights"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    chat_template_kwargs: dict = field(
        default_factory=dict,
        metadata={"help": "extra arguments of the model's chat template wherever tessy renders a prompt, and of a "
                          "chat endpoint's request (gpt-oss: {reasoning_effort: high}; Qwen3: {enable_thinking: "
                          "false})"},
    )


@dataclass
class Endpoint:
    """Where a role's model is served and what its requests cost (the openai backend's): not what
    the records hold, so shards served by other endpoints, or a run resumed against a restarted
    server, keep one config hash."""

    urls: list[str] = field(
        default_factory=list,
        metadata={"kind": "url", "help": "openai backend: base URLs ending in /v1 (vLLM, SGLang, llama.cpp); several"
                                         " spread the samples"},
    )
    api_key_env: str | None = field(
        default=None,
        metadata={"help": "openai backend: name of the environment variable holding the API key (never the key "
                          "itself)"},
    )
    timeout_s: float = field(
        default=120.0,
        metadata={"gt": 0, "help": "openai backend: seconds one request may take before it counts as failed"},
    )
    max_retries: int = field(
        default=3,
        metadata={"min": 0, "help": "openai backend: retries of a failed request (with backoff) before the sample is"
                                    " written as an error"},
    )
    concurrency: int = field(
        default=64,
        metadata={"min": 1, "help": "openai backend: most requests in flight per endpoint"},
    )
    price_per_million_tokens: Price | None = field(
        default=None,
        metadata={"help": "what this role's endpoint charges per million tokens, {input, output, cached_input}: "
                          "tessy synth shows the money spent so far and the projected total"},
    )


@dataclass
class Turn:
    """How a role takes its turns in the loop."""

    k: int | None = field(
        default=None,
        metadata={"min": 1, "help": "tokens per turn of this role; null is the top-level k (the authors' release: "
                                    "student 5, teacher 10)"},
    )
    stream_cuts: bool | None = field(
        default=None,
        metadata={"help": "stop a turn's request as soon as the predictor's cut is final (the kept text is the "
                          "same); null is on where the backend can (hf, openai) and the predictor can promise it",
                  "records": False},
    )


@dataclass
class RoleConfig:
    """A role of the synth config (`student:`, `teacher:`): one flat mapping in a file, made of the
    role's model, its endpoint and its turn."""

    spec: ModelSpec = field(metadata={"flat": True})
    endpoint: Endpoint = field(default_factory=Endpoint, metadata={"flat": True, "records": False})
    turn: Turn = field(default_factory=Turn, metadata={"flat": True})

    def renderer(self, tokenizer, profiles: dict[str, ProfileSpec] | None = None) -> Renderer:
        """How this role's prompts are rendered for `tokenizer` (its profile and template arguments)."""
        return Renderer(get_profile(self.spec.profile, profiles), tokenizer, dict(self.spec.chat_template_kwargs))


# The order a role's keys are printed (`tessy config`) and saved in, the same in every tessy version.
ROLE_KEYS = ("model", "profile", "backend", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "k",
             "seed", "dtype", "device", "urls", "api_key_env", "timeout_s", "max_retries", "concurrency",
             "chat_template_kwargs", "stream_cuts", "price_per_million_tokens")


def role_config(model: str, **values) -> RoleConfig:
    """A role's config from its flat keys (`role_config("gemma3-270m", seed=1, urls=[...])`), unchecked."""
    parts = {name: {k: values.pop(k) for k in flat_keys(cls) if k in values}
             for name, cls in (("spec", ModelSpec), ("endpoint", Endpoint), ("turn", Turn))}
    if values:
        raise TypeError(f"unknown role keys: {', '.join(values)}")
    return RoleConfig(ModelSpec(model, **parts["spec"]), Endpoint(**parts["endpoint"]), Turn(**parts["turn"]))


@dataclass
class AnnotatorConfig:
    """`tessy annotate --annotator config`: any model as the style annotator, with its own sampling,
    `chat_template_kwargs` (Qwen3: {enable_thinking: false}), endpoint and answer budget."""

    spec: ModelSpec = field(metadata={"flat": True})
    endpoint: Endpoint = field(default_factory=Endpoint, metadata={"flat": True})
    max_tokens: int = field(
        default=1024,
        metadata={"min": 1, "help": "budget of each annotation answer (the authors' release: 32768)"},
    )


@dataclass
class SynthConfig:
    student: RoleConfig = field(
        default_factory=lambda: role_config(STUDENT_DEFAULT),
        metadata={"help": "writes the style spans and the final answer"},
    )
    # The embedded teacher is a 270M base model: at the paper's sampling alone it echoes its prompt
    # or one tag for most of the budget (zlib ratio of the demo's thinking 0.13). A repetition
    # penalty and the authors' top-k keep it writing varied text (benchmarks/demo_variety.py).
    teacher: RoleConfig = field(
        default_factory=lambda: role_config(TEACHER_DEFAULT, seed=1, top_k=20, repetition_penalty=1.15),
        metadata={"help": "writes the capability spans"},
    )
    method: str = field(
        default="tessy",
        metadata={"choices": METHODS, "help": "tessy | student-only | teacher-only | teacher-mix | teacher-answer | "
                                              "teacher-think | teacher-reference | teacher-score (paper, section "
                                              "3.4)"},
    )
    final_answer: str = field(
        default="student",
        metadata={"choices": ROLES, "help": "tessy: who writes the final answer; teacher is the paper's appendix A.1"
                                            " variant"},
    )
    score_candidates: int = field(
        default=5,
        metadata={"min": 1, "help": "teacher-score: student candidates per prompt (paper: 5)"},
    )
    mix_seed: int = field(
        default=0,
        metadata={"help": "teacher-mix: seed of the 1:1 split of prompts between teacher and student"},
    )
    student_predictor: str | dict = field(
        default="lexicon",
        metadata={"help": "B_S, cuts student spans at the first capability token: lexicon, a checkpoint of `tessy "
                          "predictor train`, or {path, labels: next-token | same-token, style_label, context_tokens, "
                          "dtype}"
                          " for a plain token-classification checkpoint such as the authors' release"},
    )
    teacher_predictor: str | dict = field(
        default="lexicon",
        metadata={"help": "B_T, cuts teacher spans at the first style token (same forms as student_predictor)"},
    )
    style_phrases: list[str] | None = field(
        default=None,
        metadata={"help": "phrase list of the lexicon predictor; null is the built-in list"},
    )
    k: int = field(
        default=20,
        metadata={"min": 1, "help": "tokens per turn (paper: 20); student.k and teacher.k override it per role"},
    )
    handover: str = field(
        default="drop-partial-word",
        metadata={"choices": HANDOVERS, "help": "how a cut span ends: drop-partial-word drops a trailing partial "
                                                "word when the vocabularies differ (paper, section 3.1); "
                                                "complete-word runs on to the next whitespace of the same span (the "
                                                "authors' release)"},
    )
    max_think_tokens: int = field(
        default=256,
        metadata={"min": 1, "help": "thinking budget; tessy closes the thinking when it is spent"},
    )
    max_answer_tokens: int = field(default=128, metadata={"min": 1, "help": "budget of the final answer"})
    max_rounds: int = field(default=200, metadata={"min": 1, "help": "guard: most turns per sample"})
    repetition_min_words: int = field(
        default=3,
        metadata={"min": 1, "help": "repetition guard: the shortest unit, in words, whose repeats end the thinking "
                                    "(a shorter unit only when it fills the window)"},
    )
    repetition_min_repeats: int = field(
        default=8,
        metadata={"min": 2, "help": "repetition guard: back-to-back repeats of the unit"},
    )
    repetition_window_chars: int = field(
        default=1000,
        metadata={"min": 1, "help": "repetition guard: how far back it looks, in characters"},
    )
    stream_every: int = field(
        default=4,
        metadata={"min": 1, "help": "streamed cuts: tokens between two readings of a span by a learned predictor "
                                    "(micro-batched across samples; the lexicon reads every token)", "records": False},
    )
    warm_prompts: bool = field(
        default=True,
        metadata={"help": "tessy on servers (events): a new sample's prompt is computed on the teacher's server "
                          "while the student writes its first turn (one 1-token request), so the teacher's first "
                          "turn finds it in the prefix cache", "records": False},
    )
    batch_size: int = field(default=8, metadata={"min": 1, "help": "rows a model call aims at", "records": False})
    in_flight: int = field(
        default=0,
        metadata={"min": 0, "help": "samples open at once; 0 is 2 x batch_size: each waits on one model at a time, "
                                    "so each model's call gets about batch_size rows. With servers, size it to keep "
                                    "every replica busy (README: Run at scale)", "records": False},
    )
    driver: str = field(
        default="auto",
        metadata={"choices": DRIVERS, "help": "auto | events | ticks: events moves each sample on its own clock "
                                              "(server backends), ticks batches all samples in lock-step (in-process"
                                              " backends); auto picks by backend", "records": False},
    )
    profiles: dict[str, ProfileSpec] = field(
        default_factory=dict,
        metadata={"help": "user-defined profiles: name -> {think_open, think_close, answer_open, fallback_template}"},
    )
    def to_dict(self) -> dict:
        """The config as a file writes it: {key: value}, each role one flat mapping (`ROLE_KEYS`)."""
        data = to_flat(self)
        for name in ROLES:
            data[name] = {key: data[name][key] for key in ROLE_KEYS}
        return data

    def hash(self) -> str:
        """16 hex digits of what decides the records: every field but those whose metadata says
        `records: False` (a role's endpoint, how samples are scheduled and streamed). Every request's
        seed comes from its sample (tessy/engine/seeds.py), not from its batch or its turn in the queue, and a
        turn stopped at a final cut keeps what the whole turn keeps (tessy/engine/streaming.py)."""
        data = to_flat(self, leave_out=lambda f: f.metadata.get("records") is False)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass
class Recipe:
    """The sections of a config file that make the boundary predictors: `tessy annotate` reads
    `annotator` and `annotate`, `tessy predictor train` reads `predictor_train`. A synth run ignores
    them, so one file (configs/predictor-release.yaml) serves all three commands."""

    annotator: AnnotatorConfig | None = field(
        default=None,
        metadata={"help": "tessy annotate --annotator config: the annotating model, a model entry like student: plus"
                          " max_tokens (not part of a synth run)"},
    )

    annotate: dict = field(
        default_factory=dict,
        metadata={"help": "tessy annotate's options when --config names this file (its flags' names, with _); "
                          "flags given on the command line win"},
    )
    predictor_train: dict = field(
        default_factory=dict,
        metadata={"help": "tessy predictor train's options when --config names this file (its flags' names, with "
                          "_); flags given on the command line win"},
    )


def load_recipe(path: str | Path | None) -> Recipe:
    """The recipe sections of a config file, checked ({} and no annotator without a file)."""
    if path is None:
        return Recipe()
    data = read_yaml(path)
    sections = {f.name: data[f.name] for f in dataclasses.fields(Recipe) if f.name in data}
    return load(Recipe, sections, str(path), nested={"annotator": AnnotatorConfig}
                if isinstance(sections.get("annotator"), dict) else None)


def load_config(path: str | Path | None = None, **overrides) -> SynthConfig:
    """The default config, updated from a YAML file, then from `overrides` (the command line; None
    values ignored; a role's overrides are a mapping of its fields). Every value is checked here,
    before any model loads (`tessy.typed`)."""
    where = str(path or "config")
    data = read_yaml(path) if path is not None else {}
    for f in dataclasses.fields(Recipe):  # the predictors' recipe: `load_recipe` reads it
        data.pop(f.name, None)
    defaults = SynthConfig().to_dict()
    for role in ROLES:
        if isinstance(data.get(role, {}), dict):
            given = {**data.get(role, {}), **(overrides.get(role) or {})}
            # A role keeps the embedded default's settings only while it names that model: the
            # embedded teacher's sampling fixes (above) are for that model, not for another.
            base = defaults[role]
            if given.get("model", base["model"]) != base["model"]:
                base = to_flat(role_config(base["model"], seed=base["seed"]))
            data[role] = {**base, **(data.get(role) or {})}
    config = load(SynthConfig, data, where, overrides, nested={role: RoleConfig for role in ROLES})
    check(config, where)
    return config


def command_section(path: str | Path | None, name: str) -> dict:
    """The `name:` section of a config file (`annotate`, `predictor_train`): a command's options,
    which it checks itself; {} without a file or section."""
    if path is None:
        return {}
    section = read_yaml(path).get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {name}: must be a mapping of {name.replace('_', ' ')} options")
    return section


def check(config: SynthConfig, where: str) -> None:
    """What one field cannot check alone: profile names (built in or under `profiles:`) and the
    predictor specs."""
    from tessy.predictors import PredictorSpec

    for role in ROLES:
        profile = getattr(config, role).spec.profile
        if profile not in BUILTIN and profile not in config.profiles:
            known = ", ".join(sorted(BUILTIN) + sorted(config.profiles))
            raise ConfigError(f"{where}: {role}.profile is {profile!r}: not a built-in profile or one under "
                              f"profiles: ({known})")
        spec = getattr(config, f"{role}_predictor")
        if isinstance(spec, dict):
            try:
                PredictorSpec.parse(spec, f"{where}: {role}_predictor")
            except ValueError as e:
                raise ConfigError(str(e)) from None
