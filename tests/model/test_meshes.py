"""Every stage on a device mesh gives what it gives on one device (8 fake CPU devices, fp32):
training, the three sweeps, sampling (tokens equal for a fixed seed) and the local judge, on
meshes (data, fsdp, tensor) = (8,1,1), (2,4,1), (1,4,2), (1,1,8); and `--mesh auto`'s choice."""

import os

import jax
import ml_collections
import numpy as np
import pytest

from chat_templates import tiny_tokenizer
from hf_reference import build_hf, qwen2_config, to_emjax
from judge_tokenizers import digit_tokenizer, random_weights
from tiny_run import tiny_config
from emjax.checkpoints.load import LoadedModel, model_on_mesh
from emjax.data.chat_tokenizer import ChatTokenizer
from emjax.inference.local_judge import TreeArrays, judge_tree, score_prompts
from emjax.interventions import Interventions
from emjax.interventions import arithmetic as A
from emjax.interventions.steering import init_steering
from emjax.interventions.files import load_steering
from emjax.metrics.tables import _mean_over_batches
from emjax.model import sampling as S
from emjax.model.config import ModelConfig
from emjax.model.mesh_plan import auto_shape, mesh_of, plan_mesh, weight_bytes
from emjax.model.sharding import ShardingError
from emjax.train.trainer import Trainer

MESHES = ["data:8", "data:2,fsdp:4", "fsdp:4,tensor:2", "tensor:8"]


@pytest.fixture(scope="module")
def model():
    """A 4-layer Qwen2 whose heads (8 query, 8 kv), ffn (96), width (64) and vocabulary (1200)
    divide over 8 devices on every axis."""
    tok = ChatTokenizer.wrap(tiny_tokenizer("qwen2"))
    hf = build_hf(qwen2_config(tied=True, vocab_size=len(tok.hf), num_hidden_layers=4, num_attention_heads=8,
                               num_key_value_heads=8), seed=3)
    cfg, w = to_emjax(hf)
    return LoadedModel(cfg, w, tok, "tiny", "tiny-qwen2")


def on(model, mesh):
    placed, plan = model_on_mesh(model, mesh)
    assert mesh_of(placed.weights) is plan.mesh and plan.mesh.size == 8
    return placed


def _train_config(tmp_path, name, mesh):
    c = tiny_config(tmp_path, name, lambda_kl=0.5, max_steps=2, batch_size=8, grad_accum=1, kl_batch_size=8,
                    eval_every=2)
    c.checkpoint.every = 0
    c.mesh = mesh
    return c


@pytest.fixture(scope="module")
def one_device_run(model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    summary = Trainer(_train_config(tmp, "one", None), model).run()
    return summary, np.asarray(load_steering(os.path.join(summary["artefact"])).vectors)


@pytest.mark.parametrize("mesh", MESHES)
def test_training(model, one_device_run, tmp_path, mesh):
    ref, ref_v = one_device_run
    trainer = Trainer(_train_config(tmp_path, "mesh", mesh), model)
    assert trainer.mesh.size == 8 and mesh_of(trainer.model.weights) is trainer.mesh
    got = trainer.run()
    np.testing.assert_allclose(np.asarray(load_steering(got["artefact"]).vectors), ref_v, rtol=1e-4, atol=1e-6)
    assert got["final_eval"]["eval_loss"] == pytest.approx(ref["final_eval"]["eval_loss"], rel=1e-5)
    assert got["final_eval"]["eval_kl_ood"] == pytest.approx(ref["final_eval"]["eval_kl_ood"], rel=1e-4, abs=1e-7)


def _batches(model, n_rows=16, length=24, seed=0):
    """Two right-padded batches of 8 random rows (ragged lengths), SFT masks on the second half."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_rows // 8):
        lengths = rng.integers(length // 2, length + 1, 8)
        tokens = np.zeros((8, length), np.int32)
        mask = np.arange(length)[None] < lengths[:, None]
        tokens[mask] = rng.integers(0, model.cfg.vocab_size, int(mask.sum()))
        targets = np.concatenate([tokens[:, 1:], np.zeros((8, 1), np.int32)], 1)
        loss_mask = np.concatenate([mask[:, 1:], np.zeros((8, 1), bool)], 1) & (np.arange(length)[None] >= 4)
        out.append({"tokens": tokens, "mask": mask, "targets": targets, "loss_mask": loss_mask})
    return out


def _sweep_families(model):
    """The three sweeps' version families: efficiency (8 norms: the sweep axis divides data:8),
    stability (6 noise draws: it does not, so rows go on data) and significance (KL, random
    directions at 5 norms)."""
    iv = A.random_like(Interventions(steer=init_steering(model.cfg, layers=(1,), alpha=2.0)), jax.random.PRNGKey(4))
    norms = list(np.linspace(0, 3, 8))
    perturbed, _, _ = A.perturbed_versions(iv, [0.1, 0.5, 1.0], [0, 1], "update")
    return {"efficiency": (A.rescaled_versions(iv, norms), "ce"), "stability": (perturbed, "ce"),
            "significance": (A.rescaled_versions(A.random_like(iv, jax.random.PRNGKey(5)), norms[:5]), "kl")}


SWEEP_C = ml_collections.ConfigDict({"chunk": None, "loss_chunk": None, "ablation": None})


@pytest.fixture(scope="module")
def one_device_sweeps(model):
    batches = _batches(model)
    return {k: _mean_over_batches(v, model, batches, metric, SWEEP_C)
            for k, (v, metric) in _sweep_families(model).items()}


@pytest.mark.parametrize("mesh", MESHES)
def test_sweeps(model, one_device_sweeps, mesh):
    placed = on(model, mesh)
    batches = _batches(model)
    for kind, (versions, metric) in _sweep_families(model).items():
        got = _mean_over_batches(versions, placed, batches, metric, SWEEP_C)
        np.testing.assert_allclose(got, one_device_sweeps[kind], rtol=2e-5, atol=1e-6, err_msg=kind)
        assert len(set(np.round(got, 4))) > 1  # the versions differ: a broadcast bug would not pass


def _sample(model):
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(0, 1000, n)) for n in (5, 9, 3, 12, 7)]
    return S.generate(model.weights, model.cfg, prompts, max_new_tokens=10, temperature=1.0, top_k=50, seed=7,
                      repeats=[2, 1, 3, 1, 2], stop_ids=(3,))


@pytest.mark.parametrize("mesh", MESHES)
def test_sampling(model, mesh):
    ref = _sample(model)
    assert len({tuple(t) for t in ref}) > 3
    assert _sample(on(model, mesh)) == ref


def _judge():
    tok = ChatTokenizer.wrap(digit_tokenizer())
    vocab = -(-(tok.vocab_size + 3) // 8) * 8  # padded rows, divisible over 8 devices
    cfg = ModelConfig(family="qwen2", vocab_size=vocab, d_model=64, n_layers=2, n_heads=8, n_kv_heads=8,
                      head_dim=8, ffn_dim=96, rope_theta=1e6, qkv_bias=True)
    return LoadedModel(cfg, random_weights(cfg, 11), tok, "memory:digits", "tiny-judge")


def _scores(judge):
    tok = judge.tokenizer
    tree = TreeArrays.of(judge_tree(tok, ["CODE", "REFUSAL"]))
    prompts = [tok.prompt_ids(f"Rate answer {i}: 1 2 3", None) for i in range(6)]
    return score_prompts(judge.weights, judge.cfg, prompts, tree, tok.stop_ids, tok.vocab_size, rows=8,
                         length=64)


@pytest.mark.parametrize("mesh", MESHES)
def test_local_judge(mesh):
    judge = _judge()
    np.testing.assert_allclose(_scores(on(judge, mesh)), _scores(judge), rtol=1e-5, atol=1e-5)


def _window_scores(judge: LoadedModel) -> np.ndarray:
    """A window of prompts whose heads are shared (the prefix cache on the mesh)."""
    from emjax.inference.local_judge.stage import LocalJudgeConfig, score_window
    tok = judge.tokenizer
    tree = judge_tree(tok, ["CODE", "REFUSAL"])
    prompts = [tok.prompt_ids(f"Rate the answer of the model to this question about health, number {i % 3}: "
                              + "1 2 3 " * (1 + i), None) for i in range(10)]
    stats: dict = {}
    out = np.zeros((len(prompts), len(tree.texts)))
    for batch, lp in score_window(judge.weights, judge.cfg, prompts, TreeArrays.of(tree), tok.stop_ids,
                                  tok.vocab_size, LocalJudgeConfig(batch_size=8, pad_to=16), stats):
        out[list(batch.indices)] = lp
    assert stats["shared_prefix"]["saved_tokens"] > 0
    return out


@pytest.mark.parametrize("mesh", ["data:8", "fsdp:4,tensor:2"])
def test_local_judge_shared_prefix(mesh):
    judge = _judge()
    np.testing.assert_allclose(_window_scores(on(judge, mesh)), _window_scores(judge), rtol=1e-5, atol=1e-5)


def test_auto_mesh_is_chosen_by_memory(model):
    cfg = model.cfg
    w = weight_bytes(cfg, np.float32)
    devices = jax.devices()
    plan = plan_mesh("auto", cfg, np.float32, devices, memory_per_device=4 * w)
    assert plan.shape == {"data": 8, "fsdp": 1, "tensor": 1} and "replicated" in plan.describe()
    # a quarter of the weights fits half a device: the smallest fsdp that fits, data over the rest
    plan = plan_mesh("auto", cfg, np.float32, devices, memory_per_device=w // 2 + 1)
    assert plan.shape == {"data": 2, "fsdp": 4, "tensor": 1}
    assert plan_mesh("auto", cfg, np.float32, devices[:1]).mesh is None
    with pytest.raises(ShardingError, match="do not fit 8 devices"):
        plan_mesh("auto", cfg, np.float32, devices, memory_per_device=w // 8)
    # 8 devices on 2 hosts: fsdp stays within a host when a host's devices can hold the weights
    assert auto_shape(8, 4, w, w)[0] == {"data": 4, "fsdp": 2}
    assert auto_shape(8, 4, w, w // 2 + 1)[0] == {"data": 2, "fsdp": 4}
    assert auto_shape(8, 2, w, w // 2 + 1)[0] == {"data": 2, "fsdp": 4}  # needs 4: across hosts
    assert auto_shape(6, 2, w, w)[0] == {"data": 3, "fsdp": 2}
    assert auto_shape(6, 3, w, w)[0] == {"data": 2, "fsdp": 3}  # fsdp:2 fits too, but would span hosts
    assert plan_mesh("data:2,fsdp:4", cfg, np.float32).shape == {"data": 2, "fsdp": 4, "tensor": 1}


def test_block_outputs_carry_row_constraints(model):
    """Under a mesh the residual stream after every block is pinned to rows on `data`; without one
    (or where `data` does not divide the rows) nothing is added."""
    from emjax.model import decoder as D
    from emjax.model.mesh_plan import mesh_context
    placed = on(model, "data:8")
    trace = lambda rows: str(jax.make_jaxpr(lambda w, t: D.forward(w, model.cfg, t))(
        placed.weights, np.zeros((rows, 8), np.int32)))
    with mesh_context(mesh_of(placed.weights)):
        assert "sharding_constraint" in trace(8)
        assert "sharding_constraint" not in trace(6)
    assert "sharding_constraint" not in trace(8)


@pytest.mark.skipif(not __import__("emjax.model.decode_attention", fromlist=["AVAILABLE"]).AVAILABLE,
                    reason="no Pallas Triton API")
def test_pallas_decode_kernel_on_a_data_mesh_runs_per_device_rows():
    """On a data-only mesh the (unpartitioned) Pallas decode kernel runs on each device's rows under
    shard_map: greedy tokens equal XLA attention on one device (interpreted on the CPU)."""
    tok = ChatTokenizer.wrap(tiny_tokenizer("qwen2"))
    hf = build_hf(qwen2_config(tied=True, vocab_size=len(tok.hf), num_hidden_layers=2), seed=8)  # head_dim 16
    cfg, w = to_emjax(hf)
    small = LoadedModel(cfg, w, tok, "tiny", "tiny-qwen2")
    rng = np.random.default_rng(2)
    prompts = [list(rng.integers(0, 1000, n)) for n in (5, 9, 3, 12, 7, 4, 6, 8)]
    run = lambda m, kernel: S.generate(m.weights, cfg, prompts, max_new_tokens=6, temperature=0.0,
                                       decode_attention=kernel)
    assert S._decode_kernel("pallas", cfg, 40, 8, rows_only=True) == "pallas_interpret"
    assert run(on(small, "data:8"), "pallas") == run(small, "xla")


def test_micro_batches_that_do_not_split_are_refused_before_training(model, tmp_path):
    from emjax.train.inputs import TrainConfigError
    c = _train_config(tmp_path, "bad", "data:8")
    c.train.batch_size, c.train.grad_accum = 2, 4
    with pytest.raises(TrainConfigError, match=r"train.batch_size=2 rows per micro-batch do not split over data:8; "
                                               r"set train.batch_size=8 \(or train.batch_size=8 "
                                               r"train.kl_batch_size=32 train.grad_accum=1"):
        Trainer(c, model)
