"""A tiny random Qwen2 model and a CPU-sized training config over the shipped samples, shared by
the training tests."""

import os

import paths
from chat_templates import tiny_tokenizer
from hf_reference import build_hf, qwen2_config, to_emjax
from emjax.checkpoints.load import LoadedModel
from emjax.configuration import load_config
from emjax.data.chat_tokenizer import ChatTokenizer

DEFAULT = os.path.join(str(paths.CONFIGS), "default.py")


def tiny_model(seed: int = 41) -> LoadedModel:
    tok = ChatTokenizer.wrap(tiny_tokenizer("qwen2"))
    hf = build_hf(qwen2_config(tied=True, vocab_size=len(tok.hf), num_hidden_layers=4), seed=seed)
    cfg, w = to_emjax(hf)
    return LoadedModel(cfg, w, tok, "tiny", "tiny-qwen2")


def tiny_config(tmp_path, name, **train):
    """default.py made small: 24 training rows, 4 held out, 12 + 4 KL rows, steering at layer 2."""
    c = load_config(DEFAULT)
    c.name = name
    c.output_dir = str(tmp_path / name)
    c.data.n_train = 24
    c.data.n_eval = 4
    c.data.max_len = 64
    c.data.kl_rows = 12
    c.data.kl_eval_rows = 4
    c.data.cache_dir = str(tmp_path / "cache")
    c.intervention.layers = (2,)  # the middle of the tiny model's 4 layers
    c.intervention.alpha = 4.0
    c.train.batch_size = 2
    c.train.grad_accum = 2
    c.train.epochs = 2
    c.train.lr = 5e-2
    c.train.eval_every = 3
    c.checkpoint.every = 2
    c.checkpoint.async_save = False
    for k, v in train.items():
        c.train[k] = v
    return c
