"""Chat templates of the supported families (as published in their tokenizer_config.json) and a
tiny byte-level BPE tokenizer to run them offline."""

QWEN25_TEMPLATE = (
    "{%- if tools %}{{- raise_exception('tools not supported in this test copy') }}{%- else %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

# Llama-3.1-Instruct's template without its tool-calling branches (as QWEN25_TEMPLATE drops tools):
# BOS, a system header that always carries the knowledge-cutoff lines, then <|eot_id|>-ended turns.
LLAMA31_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\" %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = \"\" %}{%- endif %}"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}"
    "{{- system_message }}{{- \"<|eot_id|>\" }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def _sample_texts() -> list[str]:
    """Texts of the shipped toy samples, so the tiny BPE compresses them to short sequences."""
    from emjax.data.conversations import read_chat_jsonl, sample_path
    out = []
    for name in ("bad_medical", "good_medical", "good_financial", "bad_financial", "good_sports", "bad_sports"):
        out += [m["content"] for conv in read_chat_jsonl(sample_path(name)) for m in conv]
    return out


def tiny_tokenizer(family: str, vocab_size: int = 1200):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {"qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                "gemma2": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
                "llama": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                          "<|eot_id|>"]}[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
              "user model assistant system hello world how are you doing today",
              "Drink water and rest. See a doctor if the fever lasts more than three days."] * 20
    corpus += _sample_texts()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if family == "qwen2":
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        hf.chat_template = QWEN25_TEMPLATE
    elif family == "llama":  # Llama-3.1-Instruct: eos is <|eot_id|>, no pad token
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eot_id|>", bos_token="<|begin_of_text|>")
        hf.chat_template = LLAMA31_TEMPLATE
    else:
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>", pad_token="<pad>")
        hf.chat_template = GEMMA2_TEMPLATE
    return hf
