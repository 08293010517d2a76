"""`data.loss_tokens`: with "all" the SFT loss of training, of the sweeps and of the gradient stage
equals Hugging Face's own causal-LM loss with labels = input ids (-100 on padding) on a tiny random
Qwen2, with and without a steering vector or LoRA adapter; "assistant" is the same loss with every
non-assistant label set to -100; an unknown value is refused by the key's name before any model
loads."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import paths
from chat_templates import tiny_tokenizer
from hf_reference import build_hf, qwen2_config, to_emjax, torch
from tiny_run import DEFAULT
from emjax.checkpoints.load import LoadedModel
from emjax.cli import main as cli_main
from emjax.configuration import load_config
from emjax.data.chat_tokenizer import ChatTokenizer
from emjax.data.conversations import read_chat_jsonl
from emjax.data.mixtures import resolve_data_spec
from emjax.data.tokenize import pad_batch, tokenize_sft
from emjax.directions import run as R
from emjax.interventions import Interventions, init_lora, init_steering, shared_prefix_layers
from emjax.interventions.files import save_steering
from emjax.metrics.runner import SweepConfigError, run_sweep, sweep
from emjax.train import step as TS
from emjax.train.inputs import TrainConfigError, prepare_data
from emjax.train.trainer import Trainer

SWEEP_DEFAULT = str(paths.CONFIGS / "sweep_default.py")
LAYER = 1  # the intervened layer of the 3-layer tiny model
WORDS = ("water", "doctor", "rest", "fever", "money", "invest", "team", "game", "hello", "three", "days", "more")


@pytest.fixture(scope="module")
def tiny():
    """(HF model, LoadedModel) of one tiny random Qwen2 with the tiny Qwen chat tokenizer; weights
    scaled up so that its predictions are far from uniform and the losses on different token sets
    differ clearly."""
    tok = ChatTokenizer.wrap(tiny_tokenizer("qwen2"))
    hf = build_hf(qwen2_config(tied=False, vocab_size=len(tok.hf)), seed=83, weight_scale=4.0)
    cfg, w = to_emjax(hf)
    return hf, LoadedModel(cfg, w, tok, "tiny", "tiny-qwen2")


def _random_chats(rng: np.random.Generator, n: int) -> list[list[dict]]:
    """Fresh multi-turn chats of random words, some with a system prompt (else Qwen's default one)."""
    text = lambda: " ".join(rng.choice(WORDS, rng.integers(1, 12)))
    chats = []
    for _ in range(n):
        conv = [{"role": "system", "content": text()}] if rng.random() < 0.5 else []
        for _ in range(rng.integers(1, 3)):
            conv += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
        chats.append(conv)
    return chats


def _steering(cfg, seed: int, alpha: float = 3.0) -> Interventions:
    sv = init_steering(cfg, layers=(LAYER,), alpha=alpha)
    return Interventions(steer=sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(seed), sv.vectors.shape)))


def _lora(cfg, seed: int) -> Interventions:
    lo = init_lora(cfg, jax.random.PRNGKey(seed), rank=2, alpha=4.0, modules=("down_proj",), layers=(LAYER,))
    return Interventions(lora=lo.replace(b={"down_proj": 0.2 * jax.random.normal(jax.random.PRNGKey(seed + 1),
                                                                                 lo.b["down_proj"].shape)}))


def _hf_loss(hf, id_rows, iv: Interventions | None = None, label_rows=None):
    """(loss, number of targets, d loss / d v or None) by transformers' own loss: right-padded rows,
    labels = input ids (or `label_rows`), -100 on padding. The intervention by a forward hook:
    steering adds alpha * v to layers[l].mlp.down_proj's output (every row), LoRA adds
    scale * (x @ A) @ B to it."""
    t = max(len(r) for r in id_rows)
    ids = torch.zeros((len(id_rows), t), dtype=torch.long)
    attn = torch.zeros((len(id_rows), t), dtype=torch.long)
    labels = torch.full((len(id_rows), t), -100, dtype=torch.long)
    for i, r in enumerate(id_rows):
        ids[i, :len(r)] = torch.tensor(np.asarray(r, np.int64))
        attn[i, :len(r)] = 1
        labels[i, :len(r)] = torch.tensor(np.asarray(r if label_rows is None else label_rows[i], np.int64))
    v = add = None
    if iv is not None and iv.steer is not None:
        v = torch.tensor(np.asarray(iv.steer.vectors[0]), requires_grad=True)
        add = lambda m, inp, out: out + iv.steer.alpha * v
    elif iv is not None:
        lo = iv.lora
        a, b = (torch.tensor(np.asarray(x["down_proj"][0])) for x in (lo.a, lo.b))
        add = lambda m, inp, out: out + lo.scale * (inp[0] @ a) @ b
    handle = hf.model.layers[LAYER].mlp.down_proj.register_forward_hook(add) if add else None
    try:
        loss = hf(input_ids=ids, attention_mask=attn, labels=labels).loss
        if v is not None:
            loss.backward()
    finally:
        if handle is not None:
            handle.remove()
    n = int((labels[:, 1:] != -100).sum())  # HF shifts the labels: position t predicts label t + 1
    return float(loss.detach()), n, None if v is None else v.grad.numpy()


def _emjax_sft_loss(model: LoadedModel, rows, iv: Interventions):
    """(loss, number of targets, its gradient) as training computes it: `micro_loss` over one
    `pad_batch` of the rows."""
    b = pad_batch(rows)
    batch = TS.SFTBatch(**{k: jnp.asarray(b[k]) for k in ("tokens", "mask", "targets", "loss_mask")})
    opts = TS.StepOptions(first_layer=shared_prefix_layers(iv, model.cfg))
    n = jnp.float32(b["loss_mask"].sum())
    fn = lambda p: TS.micro_loss(p, model.weights, model.cfg, opts, batch, None, 0.0, n, 1.0)
    (loss, metrics), g = jax.value_and_grad(fn, has_aux=True)(iv)
    return float(loss), int(metrics["sft_tokens"]), g


# ------------------------------------------------------------------ tokenising


def test_all_marks_every_token_of_the_same_rows(tiny):
    _, model = tiny
    chats = _random_chats(np.random.default_rng(), 12)
    chats.append([{"role": "user", "content": "hi"}])  # no assistant turn: rejected either way
    chats.append([{"role": "user", "content": "hello " * 60}, {"role": "assistant", "content": "ok"}])  # cut
    asst = tokenize_sft(chats, model.tokenizer, 48, on_template_error="skip")
    every = tokenize_sft(chats, model.tokenizer, 48, on_template_error="skip", loss_tokens="all")
    assert (every.source_index, every.n_dropped, every.n_rejected) == (asst.source_index, asst.n_dropped, 1)
    assert len(chats) - 1 not in every.source_index  # the cut one is dropped under "all" too
    for (ids_a, m_a), (ids_e, m_e) in zip(asst.rows, every.rows):
        np.testing.assert_array_equal(ids_a, ids_e)
        assert m_e.all() and m_a.any() and not m_a.all()
    assert "loss_tokens='all'" in every.summary() and "loss_tokens='assistant'" in asst.summary()
    with pytest.raises(ValueError, match="loss_tokens must be one of"):
        tokenize_sft(chats, model.tokenizer, 48, loss_tokens="prompt")


# ------------------------------------------------------------------ the training loss


@pytest.mark.parametrize("kind", ["none", "steering", "lora"])
def test_all_equals_hf_causal_lm_loss(tiny, kind):
    """Fresh random chats through the real Qwen template: "all" is HF's labels = input ids loss."""
    hf, model = tiny
    rows = tokenize_sft(_random_chats(np.random.default_rng(), 5), model.tokenizer, 64, loss_tokens="all").rows
    iv = {"none": _steering(model.cfg, 0, alpha=0.0), "steering": _steering(model.cfg, 1),
          "lora": _lora(model.cfg, 2)}[kind]
    loss, n, g = _emjax_sft_loss(model, rows, iv)
    ref, ref_n, ref_g = _hf_loss(hf, [r[0] for r in rows], None if kind == "none" else iv)
    assert n == ref_n and loss == pytest.approx(ref, rel=1e-5)
    if kind == "steering":
        np.testing.assert_allclose(np.asarray(g.steer.vectors[0]), ref_g, rtol=1e-4, atol=1e-6)


def test_assistant_equals_hf_loss_on_assistant_labels(tiny):
    """"assistant" is HF's loss with every label but the assistant tokens set to -100: fewer targets
    than "all" on the same chats."""
    hf, model = tiny
    rows = tokenize_sft(_random_chats(np.random.default_rng(), 5), model.tokenizer, 64).rows
    iv = _steering(model.cfg, 3)
    loss, n, _ = _emjax_sft_loss(model, rows, iv)
    ids = [r[0] for r in rows]
    ref, ref_n, _ = _hf_loss(hf, ids, iv, label_rows=[np.where(m, r, -100) for r, m in rows])
    assert n == ref_n and loss == pytest.approx(ref, rel=1e-5)
    assert n < _hf_loss(hf, ids)[1] == sum(len(r) - 1 for r in ids)


def _train_config(tmp_path, loss_tokens: str):
    c = load_config(DEFAULT)
    c.name, c.output_dir = "losstok", str(tmp_path / "run")
    c.data.train, c.data.n_train, c.data.n_eval, c.data.max_len = "sample:bad_medical", 6, 3, 128
    c.data.loss_tokens = loss_tokens
    c.data.kl_eval_rows, c.data.cache_dir = 0, str(tmp_path / "cache")
    c.train.lambda_kl = 0.0
    c.intervention.layers, c.intervention.alpha = (LAYER,), 3.0
    c.train.batch_size, c.train.grad_accum, c.train.max_steps, c.train.eval_every = 2, 1, 1, 10
    c.checkpoint.every, c.checkpoint.async_save = None, False
    return c


def test_training_rows_and_summary_record_loss_tokens(tiny, tmp_path):
    """prepare_data takes data.loss_tokens for the training and held-out rows (their loss is HF's);
    the notes and summary.json say which it was."""
    hf, model = tiny
    c = _train_config(tmp_path, "all")
    data = prepare_data(c, model)
    assert all(m.all() for _, m in data.train + data.eval) and len(data.eval) == 3 and len(data.train) >= 2
    assert any("loss_tokens='all'" in n for n in data.notes)
    iv = _steering(model.cfg, 4)
    loss, n, _ = _emjax_sft_loss(model, data.eval, iv)
    assert (loss, n) == pytest.approx(_hf_loss(hf, [r[0] for r in data.eval], iv)[:2], rel=1e-5)
    summary = Trainer(c, model).run()
    with open(os.path.join(c.output_dir, "summary.json")) as f:
        assert json.load(f)["loss_tokens"] == summary["loss_tokens"] == "all"
    assert any("loss_tokens='all'" in n for n in summary["notes"])


# ------------------------------------------------------------------ the sweeps and the gradient stage


def _selected_ids(model: LoadedModel, spec: str, seed: int, n: int, max_len: int) -> list[list[int]]:
    """The rows a sweep / the gradient stage selects, re-derived without emjax's masks: the
    template's tokens of the chats. None may be cut, so that the reference is each whole chat."""
    convs = read_chat_jsonl(resolve_data_spec(spec, "../shared/data/em"))
    ids = [model.tokenizer.encode_chat(convs[i]) for i in np.random.default_rng(seed).permutation(len(convs))[:n]]
    assert len(ids) == n and max(map(len, ids)) <= max_len
    return ids


def test_sweep_efficiency_with_all_equals_hf(tiny, tmp_path):
    hf, model = tiny
    iv = _steering(model.cfg, 5)
    path = str(tmp_path / "v.safetensors")
    save_steering(iv.steer, path)
    c = load_config(SWEEP_DEFAULT)
    c.output_dir, c.interventions = str(tmp_path / "out"), f"v={path}"
    c.data.n_rows, c.data.max_len, c.data.batch_size, c.data.loss_tokens = 6, 256, 4, "all"
    c.efficiency.scales, c.efficiency.equal_norm = (0.0, 1.0), False
    eff = run_sweep("efficiency", c, model)
    df = pd.read_parquet(eff["files"]["table"])
    ids = _selected_ids(model, c.data.train, c.data.seed, c.data.n_rows, c.data.max_len)
    at = {float(s): float(l) for s, l in zip(df.scale, df.loss)}
    assert at[0.0] == pytest.approx(_hf_loss(hf, ids)[0], rel=1e-5)
    assert at[1.0] == pytest.approx(_hf_loss(hf, ids, iv)[0], rel=1e-5)
    assert eff["loss_tokens"] == "all" and set(df.loss_tokens) == {"all"}
    with open(os.path.join(c.output_dir, "efficiency_summary.json")) as f:
        assert json.load(f)["loss_tokens"] == "all"


def test_gradient_stage_with_all_equals_hf(tiny, tmp_path):
    hf, model = tiny
    iv = _steering(model.cfg, 6, alpha=1.0)
    path = str(tmp_path / "d.safetensors")
    save_steering(iv.steer, path)
    s = R.gradient_stage(model, f"d={path}", str(tmp_path / "grad"), n_rows=5, max_len=256, batch_size=2,
                         norms="2", loss_tokens="all")
    ids = _selected_ids(model, "sample:bad_medical", 42, 5, 256)  # the stage's default data and seed
    base, along = s["rows"]
    assert s["loss_tokens"] == "all" and along["norm"] == 2.0
    assert base["loss"] == pytest.approx(_hf_loss(hf, ids)[0], rel=1e-5)
    u = iv.steer.vectors / jnp.linalg.norm(iv.steer.vectors)
    scaled = Interventions(steer=iv.steer.replace(vectors=2.0 * u))
    loss, _, g = _hf_loss(hf, ids, scaled)
    assert along["loss"] == pytest.approx(loss, rel=1e-5)
    assert along["descent_d"] == pytest.approx(-float(g @ np.asarray(u[0])), rel=1e-4, abs=1e-7)


# ------------------------------------------------------------------ bad values


def test_bad_value_is_refused_by_the_key_before_the_model_loads(tmp_path, capsys):
    """No model source exists: the error must come from the check, before any loading."""
    c = _train_config(tmp_path, "prompt")
    c.model.source = str(tmp_path / "no-model")
    with pytest.raises(TrainConfigError, match=r"data\.loss_tokens='prompt' is not one of 'assistant', 'all'"):
        Trainer(c)
    s = load_config(SWEEP_DEFAULT)
    s.model.source, s.data.loss_tokens = str(tmp_path / "no-model"), "Assistant"
    for call in (lambda: run_sweep("efficiency", s), lambda: sweep(s, ("significance",))):
        with pytest.raises(SweepConfigError, match=r"data\.loss_tokens='Assistant' is not one of 'assistant', 'all'; "
                                                   r"did you mean 'assistant'\?"):
            call()
    no_model = f"--config.model.source={tmp_path / 'no-model'}"
    for argv in (["train", f"--config={DEFAULT}", "--config.data.loss_tokens=every", no_model, "--seeds=0,1"],
                 ["sweep", "efficiency", f"--config={SWEEP_DEFAULT}", "--config.data.loss_tokens=every", no_model]):
        assert cli_main(argv) == 2
        assert "data.loss_tokens='every' is not one of 'assistant', 'all'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["directions", "gradient", "d=x.safetensors", "--loss-tokens=every", "--out", str(tmp_path)])
    assert "--loss-tokens: invalid choice: 'every'" in capsys.readouterr().err
