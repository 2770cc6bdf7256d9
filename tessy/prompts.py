"""Reading the prompts file: JSON Lines with an id and either `prompt` or chat messages.

The id is `id`, or else `id_ddm`; the chat messages are `messages`, or `dialogs`. The second names
are those of the TESSY authors' released client, so its prompt files are read as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class PromptFileError(ValueError):
    """A prompts file with problems; the message names every bad line."""


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: tuple[dict, ...]


def _messages(obj: dict) -> tuple[dict, ...] | str:
    """The chat messages of one line, or a string saying what is wrong."""
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str):
            return "'prompt' must be a string"
        if not obj["prompt"].strip():
            return "empty prompt"
        return ({"role": "user", "content": obj["prompt"]},)
    key = "messages" if "messages" in obj else "dialogs" if "dialogs" in obj else None
    if key is not None:
        msgs = obj[key]
        if not isinstance(msgs, list) or not msgs:
            return f"'{key}' must be a non-empty list"
        for m in msgs:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                return "each message needs a string 'role' and 'content'"
        if not any(m["role"] == "user" and m["content"].strip() for m in msgs):
            return "empty prompt: no non-empty user message"
        return tuple({"role": m["role"], "content": m["content"]} for m in msgs)
    return "missing field: each line needs 'prompt', 'messages' or 'dialogs'"


def _id(obj: dict) -> tuple[str | None, str | None]:
    """(the line's id as a string, None), or (None, what is wrong). `id` wins over `id_ddm`."""
    key = "id" if "id" in obj else "id_ddm" if "id_ddm" in obj else None
    if key is None:
        return None, "missing field 'id' (or 'id_ddm')"
    value = obj[key]
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        return None, f"'{key}' must be a non-empty string or integer"
    return str(value), None


def read_prompts(path: str | Path) -> list[Prompt]:
    """Parse and check the whole file before any work starts; raise `PromptFileError` listing
    every bad line (malformed JSON, missing field, empty prompt, duplicate id)."""
    prompts, errors, seen = [], [], {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"line {lineno}: malformed JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                errors.append(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
                continue
            pid, problem = _id(obj)
            if problem:
                errors.append(f"line {lineno}: {problem}")
                continue
            if pid in seen:
                errors.append(f"line {lineno}: duplicate id {pid!r} (first at line {seen[pid]})")
                continue
            seen[pid] = lineno
            msgs = _messages(obj)
            if isinstance(msgs, str):
                errors.append(f"line {lineno}: {msgs} (id {pid!r})")
                continue
            prompts.append(Prompt(pid, msgs))
    if errors:
        shown = errors[:20] + ([f"... and {len(errors) - 20} more"] if len(errors) > 20 else [])
        raise PromptFileError(f"{path}: {len(errors)} bad line(s):\n  " + "\n  ".join(shown))
    return prompts
