"""Prompt banks: user prompts without answers, for data the chat model writes itself.

A prompt bank is a JSONL file, one `{"id": str, "domain": str, "prompt": str}` per line (ids
unique). Two consumers:

* the style-distillation builder (`emjax.train.distill`), which answers a bank's prompts under a
  system prompt and keeps the answers without it;
* the KL set's `chat:SPEC` sources (`emjax.train.kl_set`), which accept a bank as well as a chat
  JSONL file: only the user prompts are read either way (`read_prompt_source`).

    items = read_prompt_bank(sample_path("technical_prompts_vehicles.jsonl"))
    items[0].prompt, items[0].domain

Numpy-free and JAX-free.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

from emjax.data.conversations import DataError, PathLike, iter_json_lines, validate_conversation


@dataclasses.dataclass(frozen=True)
class PromptItem:
    """One prompt of a bank: a unique id, its domain (e.g. "vehicles") and the user prompt."""

    id: str
    domain: str
    prompt: str


def is_prompt_line(obj: object) -> bool:
    """A prompt-bank line (`{"prompt": ...}`), as opposed to a chat line (`{"messages": ...}`)."""
    return isinstance(obj, dict) and "prompt" in obj and "messages" not in obj


def read_prompt_bank(path: PathLike) -> list[PromptItem]:
    """The items of a prompt-bank JSONL file (plain or gzip), validated line by line.

    Raises DataError naming the file and line for a missing or empty field, a duplicate id or an
    empty file.
    """
    path = Path(path)
    items: list[PromptItem] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_json_lines(path):
        if not is_prompt_line(obj):
            raise DataError(f"{path}:{lineno}: not a prompt-bank line (want {{id, domain, prompt}})")
        fields = {}
        for key in ("id", "domain", "prompt"):
            value = obj.get(key)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}:{lineno}: {key!r} must be a non-empty string")
            fields[key] = value
        if fields["id"] in seen:
            raise DataError(f"{path}:{lineno}: duplicate id {fields['id']!r} (first on line {seen[fields['id']]})")
        seen[fields["id"]] = lineno
        items.append(PromptItem(**fields))
    if not items:
        raise DataError(f"{path}: empty file (no prompts)")
    return items


def write_prompt_bank(path: PathLike, items: Iterable[PromptItem]) -> None:
    """Write items as a prompt-bank JSONL file (one line each, in order)."""
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(dataclasses.asdict(it), ensure_ascii=False) + "\n")


def read_prompt_source(path: PathLike) -> list[str]:
    """The user prompts of a prompt bank or of a chat JSONL file (its first user turns), in order.

    The format is told by the first line: `{"prompt": ...}` is a bank, `{"messages": ...}` a chat.
    """
    path = Path(path)
    for _, first in iter_json_lines(path):
        if is_prompt_line(first):
            return [it.prompt for it in read_prompt_bank(path)]
        break
    prompts = []
    for lineno, obj in iter_json_lines(path):
        try:
            conv = validate_conversation(obj)
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
        prompts.append(next((m["content"] for m in conv if m["role"] == "user"), ""))
    if not prompts:
        raise DataError(f"{path}: empty file (no conversations)")
    return prompts
