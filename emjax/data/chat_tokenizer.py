"""Tokenizers, chat templates and assistant-token masks.

A `ChatTokenizer` wraps a Hugging Face fast tokenizer (from a model folder's `tokenizer.json` /
`tokenizer_config.json`, or from GGUF metadata) and knows the model's end-of-turn tokens.

SFT masks are built by prompt-prefix length: for each assistant turn, the tokens of the
conversation up to that turn *with the generation prompt* must be an exact token prefix of the
conversation including the turn; the tokens in between are that turn's response (its content and
the template's end-of-turn marker). The prefix property is asserted, never assumed, so a template
that re-tokenises across the boundary fails loudly instead of silently training on the prompt.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from emjax.errors import EmjaxError

Message = dict[str, str]

# End-of-turn markers of the supported chat templates (Qwen2.5, Gemma-2, Llama-3).
_END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|endoftext|>", "<eos>", "<|eot_id|>")


class ChatFormatError(EmjaxError, ValueError):
    """A conversation that cannot be tokenised as asked (bad roles, prefix mismatch, ...)."""


@dataclasses.dataclass
class ChatTokenizer:
    """A Hugging Face tokenizer plus the ids that end an assistant turn."""

    hf: Any
    stop_ids: tuple[int, ...]

    @classmethod
    def wrap(cls, hf_tokenizer) -> "ChatTokenizer":
        if not getattr(hf_tokenizer, "chat_template", None):
            raise ChatFormatError("tokenizer has no chat_template")
        vocab = hf_tokenizer.get_vocab()
        stops = {vocab[t] for t in _END_OF_TURN if t in vocab}
        if hf_tokenizer.eos_token_id is not None:
            stops.add(hf_tokenizer.eos_token_id)
        return cls(hf=hf_tokenizer, stop_ids=tuple(sorted(stops)))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "ChatTokenizer":
        """From `tokenizer.json` / `tokenizer_config.json` in a local folder (no hub access)."""
        from transformers import AutoTokenizer
        return cls.wrap(AutoTokenizer.from_pretrained(os.fspath(folder), local_files_only=True))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        return self.hf.apply_chat_template(list(messages), tokenize=False,
                                           add_generation_prompt=add_generation_prompt)

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[int]:
        """Token ids of the rendered conversation. The template writes any BOS itself."""
        return self.hf.encode(self.render(messages, add_generation_prompt), add_special_tokens=False)

    def prompt_ids(self, question: str, system: str | None = None) -> list[int]:
        """Ids of a one-question prompt ending with the assistant generation prompt."""
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        return self.encode_chat(msgs, add_generation_prompt=True)

    def sft_example(self, messages: Sequence[Message]) -> tuple[np.ndarray, np.ndarray]:
        """(ids [T] int32, loss_mask [T] bool): the mask covers exactly the assistant turns.

        Raises ChatFormatError if the conversation has no assistant turn or the template breaks
        the prefix property.
        """
        _check_roles(messages)
        ids = self.encode_chat(messages)
        mask = np.zeros(len(ids), bool)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not turns:
            raise ChatFormatError("conversation has no assistant turn to train on")
        for i in turns:
            prompt = self.encode_chat(messages[:i], add_generation_prompt=True)
            upto = self.encode_chat(messages[: i + 1]) if i + 1 < len(messages) else ids
            for shorter, longer, what in ((prompt, upto, "the prompt before"), (upto, ids, "the text up to")):
                if longer[: len(shorter)] != shorter:
                    raise ChatFormatError(
                        f"{what} assistant turn {i} is not an exact token prefix of the conversation; "
                        "the chat template re-tokenises across the turn boundary")
            mask[len(prompt): len(upto)] = True
        return np.asarray(ids, np.int32), mask


def _check_roles(messages: Sequence[Message]) -> None:
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ChatFormatError(f"message {j}: role must be system, user or assistant, got {m!r:.80}")
        if not isinstance(m.get("content"), str):
            raise ChatFormatError(f"message {j}: content must be a string")
