"""Reading the prompts file: JSON Lines with `id` and either `prompt` or chat `messages`."""

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
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            return "'messages' must be a non-empty list"
        for m in msgs:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                return "each message needs a string 'role' and 'content'"
        if not any(m["role"] == "user" and m["content"].strip() for m in msgs):
            return "empty prompt: no non-empty user message"
        return tuple({"role": m["role"], "content": m["content"]} for m in msgs)
    return "missing field: each line needs 'prompt' or 'messages'"


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
            if "id" not in obj:
                errors.append(f"line {lineno}: missing field 'id'")
                continue
            if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool) or str(obj["id"]) == "":
                errors.append(f"line {lineno}: 'id' must be a non-empty string or integer")
                continue
            pid = str(obj["id"])
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
