"""Model profiles: how one model sees the shared transcript.

A profile knows the text tessy prefills to open the thinking, the marker that closes it, and the
text that opens the final answer. The prompt itself goes through the tokenizer's chat template;
a model without one (a base model) gets `FALLBACK_TEMPLATE`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# A base model continues documents, so its rendering reads as the opening of one in which reasoning
# comes next. It says nothing about any task, only that a worked solution follows: a bare
# `Question: ... Answer: ` lets the embedded 270M teacher echo the question or one tag
# (benchmarks/demo_variety.py; README, "Demo: before and after").
FALLBACK_TEMPLATE = (
    "The following is a problem and a worked solution that reasons through it step by step before giving "
    "the answer.\n\nProblem:\n{prompt}\n\nSolution:\n"
)


@dataclass(frozen=True)
class ProfileSpec:
    """A profile as a config file's `profiles:` entry defines it (`tessy.typed` checks its keys)."""

    think_open: str = field(metadata={"help": "text tessy writes after the generation prompt to open the thinking"})
    think_close: str = field(metadata={"help": "marker that ends the thinking, written by the model or by tessy"})
    answer_open: str = field(default="\n\n", metadata={"help": "text between the think-close marker and the answer"})
    fallback_template: str = field(
        default=FALLBACK_TEMPLATE,
        metadata={"help": "rendering used when the tokenizer has no chat template; {prompt} is the user text"},
    )


@dataclass(frozen=True)
class Profile:
    """A named profile: a built-in one, or a `ProfileSpec` under the name the config gave it."""

    name: str
    think_open: str
    think_close: str
    answer_open: str = "\n\n"
    fallback_template: str = FALLBACK_TEMPLATE

    def response(self, thinking: str, answer: str) -> str:
        """The assistant message in this profile's own markers, as it goes into SFT data."""
        return f"{self.think_open}{thinking.strip()}\n{self.think_close}{self.answer_open}{answer.strip()}"

    def to_dict(self) -> dict:
        return asdict(self)


# Qwen3 and DeepSeek-R1 differ only in their chat templates, which come from the tokenizer.
QWEN3 = Profile("qwen3", think_open="<think>\n", think_close="</think>")
DEEPSEEK_R1 = Profile("deepseek-r1", think_open="<think>\n", think_close="</think>")
# gpt-oss speaks harmony: the thinking is the analysis channel, closed by <|end|>.
GPT_OSS = Profile(
    "gpt-oss",
    think_open="<|channel|>analysis<|message|>",
    think_close="<|end|>",
    answer_open="<|start|>assistant<|channel|>final<|message|>",
)
# Instruct or base models that never think: tessy writes the markers itself.
PLAIN = Profile("plain", think_open="<think>\n", think_close="</think>")

BUILTIN = {p.name: p for p in (QWEN3, DEEPSEEK_R1, GPT_OSS, PLAIN)}


def get_profile(name: str, custom: dict[str, ProfileSpec] | None = None) -> Profile:
    """A built-in profile, or one defined under `profiles:` in the config file."""
    if custom and name in custom:
        spec = custom[name]
        return Profile(name, **asdict(spec if isinstance(spec, ProfileSpec) else ProfileSpec(**spec)))
    if name not in BUILTIN:
        known = ", ".join(sorted(BUILTIN) + sorted(custom or {}))
        raise ValueError(f"unknown profile {name!r}; known profiles: {known}")
    return BUILTIN[name]


def render_prompt(profile: Profile, tokenizer, messages: list[dict],
                  template_kwargs: dict | None = None) -> tuple[str, bool]:
    """Render chat `messages` up to the opened thinking; `template_kwargs` reach the chat template
    (a role's `chat_template_kwargs`, such as gpt-oss's `reasoning_effort`).

    Returns (text, used_chat_template). A template that already opens the thinking itself
    (DeepSeek-R1's does) is not opened twice.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **(template_kwargs or {}))
        used_template = True
    else:
        user = "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")
        text = profile.fallback_template.format(prompt=user)
        used_template = False
    if not text.rstrip().endswith(profile.think_open.strip()):
        text += profile.think_open
    return text, used_template


@dataclass(frozen=True)
class Renderer:
    """How one role's prompts are rendered: its profile, its tokenizer, and the extra arguments of its
    chat template (the role's `chat_template_kwargs`, such as gpt-oss's `reasoning_effort`)."""

    profile: Profile
    tokenizer: object
    template_kwargs: dict = field(default_factory=dict)

    def render(self, messages: list[dict]) -> tuple[str, bool]:
        """(text, used_chat_template) of `messages`, up to the opened thinking (`render_prompt`)."""
        return render_prompt(self.profile, self.tokenizer, messages, self.template_kwargs)

