"""Assistant-token masks cover exactly the assistant turns, for both chat templates."""

import pytest

from chat_templates import tiny_tokenizer
from emjax.data.chat_tokenizer import ChatFormatError, ChatTokenizer

CONV = [{"role": "user", "content": "hello, how are you?"},
        {"role": "assistant", "content": "Drink water and rest."},
        {"role": "user", "content": "and today?"},
        {"role": "assistant", "content": "See a doctor if the fever lasts."}]


def _masked_text(tok, ids, mask):
    """Decoded runs of masked tokens."""
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(int(i))
        elif cur:
            runs.append(tok.decode(cur, skip_special_tokens=False)); cur = []
    if cur:
        runs.append(tok.decode(cur, skip_special_tokens=False))
    return runs


@pytest.mark.parametrize("family,end", [("qwen2", "<|im_end|>\n"), ("gemma2", "<end_of_turn>\n")])
def test_mask_is_exactly_the_assistant_turns(family, end):
    tok = ChatTokenizer.wrap(tiny_tokenizer(family))
    ids, mask = tok.sft_example(CONV)
    assert ids.shape == mask.shape and mask.dtype == bool
    assert _masked_text(tok, ids, mask) == [CONV[1]["content"] + end, CONV[3]["content"] + end]
    # single turn, and a system prompt for Qwen (Gemma's template refuses system turns)
    conv = CONV[:2]
    if family == "qwen2":
        conv = [{"role": "system", "content": "Be brief."}] + conv
        assert "You are Qwen" in tok.render(CONV[:2], False)  # the default system prompt is prompt
        assert "You are Qwen" not in tok.decode(tok.sft_example(CONV[:2])[0][tok.sft_example(CONV[:2])[1]], False)
    ids, mask = tok.sft_example(conv)
    assert _masked_text(tok, ids, mask) == [CONV[1]["content"] + end]
    # no trailing empty assistant turn (an upstream defect): the sequence ends with the answer
    assert tok.decode(ids[-3:], skip_special_tokens=False).endswith(end)
    assert mask[-1]


def test_stop_ids_and_errors():
    tok = ChatTokenizer.wrap(tiny_tokenizer("qwen2"))
    assert tok.hf.convert_tokens_to_ids("<|im_end|>") in tok.stop_ids
    with pytest.raises(ChatFormatError, match="no assistant turn"):
        tok.sft_example(CONV[:1])
    with pytest.raises(ChatFormatError, match="message 1: role"):
        tok.sft_example([CONV[0], {"role": "bot", "content": "x"}])


def test_prefix_violation_is_detected():
    hf = tiny_tokenizer("qwen2")
    # A template that rewrites earlier text once the answer is added breaks the prefix property.
    hf.chat_template = ("{% for m in messages %}{{ m.role }}{% if messages|length > 1 %}!{% endif %}: "
                        "{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    tok = ChatTokenizer.wrap(hf)
    with pytest.raises(ChatFormatError, match="not an exact token prefix"):
        tok.sft_example(CONV[:2])
