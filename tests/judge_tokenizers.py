"""Tiny chat tokenizers for the local-judge tests: one that writes numbers digit by digit (as
Qwen2.5 and Gemma-2 do), one whose vocabulary holds "10", "42" and "100" as single tokens; and
tiny random emjax models sized to them."""

from __future__ import annotations

from chat_templates import GEMMA2_TEMPLATE, QWEN25_TEMPLATE

CORPUS = ["You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
          "Rate the answer. Say REFUSAL if it refused. Say CODE if it is code. Else a number.",
          "user model assistant system question answer hello world how are you today"] * 30


def digit_tokenizer():
    """Byte-level BPE with digits split one by one (Qwen2.5 style), Qwen2.5 chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(CORPUS + ["12 345 6789 100 42"] * 30,
                            trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf.chat_template = QWEN25_TEMPLATE
    return hf


def multidigit_tokenizer():
    """Byte-level BPE whose merges make "10", "42" and "100" single tokens (other numbers are
    split into digits), Gemma-2 chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
    tok.train_from_iterator(CORPUS + ["10 42 100\n10\n42\n100"] * 60,
                            trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>", pad_token="<pad>")
    hf.chat_template = GEMMA2_TEMPLATE
    return hf


def tiny_config(family: str, vocab: int):
    """A 2-layer model with 3 padded embedding rows beyond the tokenizer's vocabulary; Gemma-2 with a
    sliding window shorter than the prompts and both soft-caps."""
    from emjax.model.config import ModelConfig

    if family == "qwen2":
        return ModelConfig(family="qwen2", vocab_size=vocab + 3, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                           head_dim=16, ffn_dim=96, rope_theta=1e6, qkv_bias=True)
    from emjax.model.families.gemma2 import BLOCK
    return ModelConfig(family="gemma2", vocab_size=vocab + 3, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2,
                       head_dim=16, ffn_dim=80, tie_embeddings=True, query_pre_attn_scalar=24.0, attn_softcap=3.0,
                       final_softcap=5.0, sliding_window=5, sliding_layers=(True, False), **BLOCK)


def random_weights(cfg, seed: int, scale: float = 0.5):
    """Random float32 weights drawn with numpy (M.init_random compiles one program per leaf: slow
    on a busy CPU); norms around 1 (Qwen2) or 0 (Gemma-2, which multiplies 1 + w)."""
    import jax.numpy as jnp
    import numpy as np

    from emjax.model.schema import map_leaves

    rng = np.random.default_rng(seed)

    def draw(leaf, shape, axes):
        x = rng.standard_normal(shape).astype(np.float32)
        if leaf.kind == "norm":
            return jnp.asarray((0.0 if cfg.norm_plus_one else 1.0) + 0.1 * x)
        return jnp.asarray(scale * x)

    return map_leaves(cfg, draw)
