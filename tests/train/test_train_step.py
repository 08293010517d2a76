"""Training step: gradients against PyTorch (peft / forward hooks), KL properties, prefix sharing,
accumulation and non-finite skipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hf_reference import build_hf, gemma2_config, padded_batch, qwen2_config, to_emjax, torch
from emjax import model as M
from emjax.train import step as TS
from emjax.interventions import Interventions, init_lora, init_steering, shared_prefix_layers

jax.config.update("jax_enable_x64", False)


def _sft_rows(cfg, seed, b=3, side="right"):
    rng = np.random.default_rng(seed)
    tokens, mask = padded_batch(rng, cfg.vocab_size, [11, 7, 9][:b], side)
    targets = np.concatenate([tokens[:, 1:], np.zeros((b, 1), np.int32)], 1)
    # score a random subset of the real next tokens, as an assistant mask would
    loss_mask = mask & np.concatenate([mask[:, 1:], np.zeros((b, 1), bool)], 1) & (rng.random(mask.shape) < 0.7)
    return tokens, mask, targets, loss_mask


def _batch(tokens, mask, targets, loss_mask):
    return TS.SFTBatch(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask), targets=jnp.asarray(targets),
                       loss_mask=jnp.asarray(loss_mask))


def _torch_ce(model, tokens, mask, targets, loss_mask):
    logits = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long)).logits
    logp = torch.log_softmax(logits.float(), -1)
    tgt = logp.gather(-1, torch.tensor(targets, dtype=torch.long)[..., None])[..., 0]
    m = torch.tensor(loss_mask, dtype=torch.float32)
    return -(tgt * m).sum() / m.sum()


@pytest.fixture(scope="module", params=["qwen2", "gemma2"])
def tiny(request):
    hf = (build_hf(qwen2_config(tied=False), seed=31) if request.param == "qwen2"
          else build_hf(gemma2_config(), seed=32, weight_scale=2.0))
    cfg, w = to_emjax(hf)
    return hf, cfg, w


def test_lora_gradients_match_peft(tiny):
    peft = pytest.importorskip("peft")
    hf, cfg, w = tiny
    modules = ("q_proj", "v_proj", "down_proj", "gate_proj")
    lcfg = peft.LoraConfig(r=2, lora_alpha=8, use_rslora=True, target_modules=list(modules),
                           layers_to_transform=[1, 2], lora_dropout=0.0)
    pm = peft.get_peft_model(hf, lcfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ours = init_lora(cfg, jax.random.PRNGKey(0), rank=2, alpha=8, modules=modules, layers=(1, 2))
    a, b = {}, {}
    for m in modules:
        sub = "self_attn" if m in ("q_proj", "v_proj") else "mlp"
        get = lambda l, ab: dict(pm.named_parameters())[
            f"base_model.model.model.layers.{l}.{sub}.{m}.lora_{ab}.default.weight"]
        a[m] = jnp.stack([jnp.asarray(get(l, "A").detach().numpy().T) for l in (1, 2)])
        b[m] = jnp.stack([jnp.asarray(get(l, "B").detach().numpy().T) for l in (1, 2)])
    ours = ours.replace(a=a, b=b)
    rows = _sft_rows(cfg, 1)
    loss_t = _torch_ce(pm, *rows)
    loss_t.backward()
    grad_fn = jax.grad(lambda p: TS.micro_loss(p, w, cfg, TS.StepOptions(first_layer=1), _batch(*rows), None,
                                               0.0, jnp.float32(rows[3].sum()), 1.0)[0])
    g = grad_fn(Interventions(lora=ours))
    loss_j = TS.micro_loss(Interventions(lora=ours), w, cfg, TS.StepOptions(), _batch(*rows), None, 0.0,
                           jnp.float32(rows[3].sum()), 1.0)[0]
    np.testing.assert_allclose(float(loss_j), float(loss_t), rtol=1e-5)
    named = dict(pm.named_parameters())
    for m in modules:
        sub = "self_attn" if m in ("q_proj", "v_proj") else "mlp"
        for i, l in enumerate((1, 2)):
            ga = named[f"base_model.model.model.layers.{l}.{sub}.{m}.lora_A.default.weight"].grad.numpy().T
            gb = named[f"base_model.model.model.layers.{l}.{sub}.{m}.lora_B.default.weight"].grad.numpy().T
            np.testing.assert_allclose(np.asarray(g.lora.a[m][i]), ga, atol=2e-5, rtol=1e-3, err_msg=f"{m} A layer {l}")
            np.testing.assert_allclose(np.asarray(g.lora.b[m][i]), gb, atol=2e-5, rtol=1e-3, err_msg=f"{m} B layer {l}")
    pm.unload()


@pytest.mark.parametrize("prefix", ["below_layer", "shared"])
@pytest.mark.parametrize("hook", ["mlp_out", "block_out"])
def test_steering_gradients_match_forward_hook(tiny, hook, prefix):
    hf, cfg, w = tiny
    layer, alpha = 1, 3.0
    v0 = np.random.default_rng(2).normal(size=cfg.d_model).astype(np.float32) * 0.1
    vec = torch.tensor(v0, requires_grad=True)

    def add(mod, inp, out):  # every row, every position (upstream's hook only hit row 0)
        if isinstance(out, tuple):
            return (out[0] + alpha * vec,) + tuple(out[1:])
        return out + alpha * vec
    target = hf.model.layers[layer].mlp.down_proj if hook == "mlp_out" else hf.model.layers[layer]
    h = target.register_forward_hook(add)
    rows = _sft_rows(cfg, 3)
    loss_t = _torch_ce(hf, *rows)
    loss_t.backward()
    h.remove()
    sv = init_steering(cfg, layers=(layer,), alpha=alpha, hook=hook).replace(vectors=jnp.asarray(v0)[None])
    k = layer if prefix == "below_layer" else shared_prefix_layers(Interventions(steer=sv), cfg)
    if prefix == "shared":  # the steered block itself joins the frozen prefix where the vector is a residual add
        assert k == (layer if cfg.post_mlp_norm and hook == "mlp_out" else layer + 1)
    fn = lambda p: TS.micro_loss(p, w, cfg, TS.StepOptions(first_layer=k), _batch(*rows), None, 0.0,
                                 jnp.float32(rows[3].sum()), 1.0)[0]
    loss_j, g = jax.value_and_grad(fn)(Interventions(steer=sv))
    np.testing.assert_allclose(float(loss_j), float(loss_t), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g.steer.vectors[0]), vec.grad.numpy(), atol=1e-5, rtol=1e-3)


def test_hook_points_differ_for_gemma_only(tiny):
    hf, cfg, w = tiny
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 6)))
    v = jax.random.normal(jax.random.PRNGKey(1), (1, cfg.d_model))
    out = {h: M.forward(w, cfg, tokens, interventions=Interventions(
        steer=init_steering(cfg, layers=(1,), alpha=2.0, hook=h).replace(vectors=v))) for h in ("mlp_out", "block_out")}
    same = np.allclose(np.asarray(out["mlp_out"]), np.asarray(out["block_out"]), atol=1e-5)
    assert same == (not cfg.post_mlp_norm)


def _kl_batch(cfg, seed, side="left"):
    tokens, mask = padded_batch(np.random.default_rng(seed), cfg.vocab_size, [8, 5, 10], side)
    return TS.KLBatch(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask))


def test_kl_zero_at_init_nonnegative_and_shared_prefix_exact(tiny):
    hf, cfg, w = tiny
    kl = _kl_batch(cfg, 5)
    sft = _batch(*_sft_rows(cfg, 6))
    k = 2
    sv = init_steering(cfg, layers=(k,), alpha=1.0)
    opts = TS.StepOptions(first_layer=k)
    _, m0 = TS.micro_loss(Interventions(steer=sv), w, cfg, opts, sft, kl, 1.0, 1.0, 1.0)
    assert float(m0["kl_sum"]) == 0.0
    g = jax.grad(lambda p: TS.micro_loss(p, w, cfg, opts, sft, kl, 1.0, 1.0, 1.0)[1]["kl_sum"])(Interventions(steer=sv))
    assert float(jnp.abs(g.steer.vectors).max()) < 1e-6  # zero up to float rounding
    for s in range(3):
        v = jax.random.normal(jax.random.PRNGKey(s), sv.vectors.shape) * (s + 1)
        iv = Interventions(steer=sv.replace(vectors=v))
        _, m = TS.micro_loss(iv, w, cfg, opts, sft, kl, 1.0, 1.0, 1.0)
        assert float(m["kl_sum"]) > 0
        # Reference: two independent full forwards, KL over real tokens.
        lb = jax.nn.log_softmax(M.forward(w, cfg, kl.tokens, kl.mask), -1)
        la = jax.nn.log_softmax(M.forward(w, cfg, kl.tokens, kl.mask, interventions=iv), -1)
        ref = jnp.sum(jnp.exp(lb) * (lb - la), -1)
        np.testing.assert_allclose(float(m["kl_sum"]), float(jnp.sum(ref * kl.mask)), rtol=1e-4)
        # prefix sharing (k) equals no sharing (0), and a chunked loss equals the unchunked one
        _, m_full = TS.micro_loss(iv, w, cfg, TS.StepOptions(first_layer=0, loss_chunk=4), sft, kl, 1.0, 1.0, 1.0)
        np.testing.assert_allclose(float(m_full["kl_sum"]), float(m["kl_sum"]), rtol=1e-4)
        np.testing.assert_allclose(float(m_full["sft_sum"]), float(m["sft_sum"]), rtol=1e-5)


def _stack(batch, a):
    return jax.tree.map(lambda x: x.reshape((a, x.shape[0] // a) + x.shape[1:]), batch)


def test_accumulation_equals_full_batch_and_nonfinite_is_skipped(tiny):
    hf, cfg, w = tiny
    rows = [np.concatenate([x, y]) for x, y in zip(_sft_rows(cfg, 7, b=2), _sft_rows(cfg, 8, b=2))]
    sft = _batch(*rows)
    tk, mk = padded_batch(np.random.default_rng(9), cfg.vocab_size, [6, 9, 4, 7], "right")
    kl = TS.KLBatch(tokens=jnp.asarray(tk), mask=jnp.asarray(mk))
    tx, _ = TS.make_optimizer(1e-2, total_steps=10, warmup_steps=0)
    sv = init_steering(cfg, layers=(1,), alpha=2.0)
    sv = sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(3), sv.vectors.shape) * 0.1)
    opts = TS.StepOptions(first_layer=1)
    step = TS.compile_step(cfg, opts, tx, donate=False)
    st = TS.init_state(Interventions(steer=sv), tx)
    s1, m1 = step(st, w, _stack(sft, 1), _stack(kl, 1), jnp.float32(0.5))
    s2, m2 = step(st, w, _stack(sft, 2), _stack(kl, 2), jnp.float32(0.5))
    s4, m4 = step(st, w, _stack(sft, 4), _stack(kl, 4), jnp.float32(0.5))
    for m in (m2, m4):
        np.testing.assert_allclose(float(m["loss"]), float(m1["loss"]), rtol=1e-5)
        np.testing.assert_allclose(float(m["grad_norm"]), float(m1["grad_norm"]), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(s2.params.steer.vectors), np.asarray(s1.params.steer.vectors), atol=1e-6)
    assert not bool(m1["skipped"]) and float(jnp.abs(s1.params.steer.vectors - sv.vectors).max()) > 0
    bad, mb = step(st, w, _stack(sft, 2), _stack(kl, 2), jnp.float32(np.nan))
    assert bool(mb["skipped"])
    np.testing.assert_array_equal(np.asarray(bad.params.steer.vectors), np.asarray(sv.vectors))
    assert int(bad.opt_state.total_notfinite) == 1


@pytest.mark.parametrize("sft_over, kl_over", [("step", "micro_batch"), ("micro_batch", "micro_batch")])
def test_micro_batch_means_add_up_as_upstreams_trainer(tiny, sft_over, kl_over):
    """With "micro_batch" a term is each micro-batch's own token mean and the micro-batches' terms
    add up (transformers' Trainer without the division by the accumulation steps): the step's
    gradient is the sum of the per-micro-batch gradients written out here, and the KL term weighs
    about A times its step mean."""
    hf, cfg, w = tiny
    rows = [np.concatenate([x, y]) for x, y in zip(_sft_rows(cfg, 7, b=2), _sft_rows(cfg, 8, b=2))]
    sft = _stack(_batch(*rows), 2)
    tk, mk = padded_batch(np.random.default_rng(9), cfg.vocab_size, [6, 9, 2, 3], "right")  # unequal halves
    kl = _stack(TS.KLBatch(tokens=jnp.asarray(tk), mask=jnp.asarray(mk)), 2)
    sv = init_steering(cfg, layers=(1,), alpha=2.0)
    iv = Interventions(steer=sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(3), sv.vectors.shape) * 0.3))
    lam, plain = 0.5, TS.StepOptions(first_layer=1)
    opts = TS.StepOptions(first_layer=1, sft_mean_over=sft_over, kl_mean_over=kl_over)
    # the reference: every micro-batch's loss with its own counts where asked, the step's elsewhere
    n_sft, n_kl = float(jnp.sum(sft.loss_mask)), float(jnp.sum(kl.mask))
    ref = 0.0
    for i in range(2):
        s_i, k_i = jax.tree.map(lambda x: x[i], sft), jax.tree.map(lambda x: x[i], kl)
        ns = float(jnp.sum(s_i.loss_mask)) if sft_over == "micro_batch" else n_sft
        nk = float(jnp.sum(k_i.mask)) if kl_over == "micro_batch" else n_kl
        ref = ref + jax.grad(lambda p: TS.micro_loss(p, w, cfg, plain, s_i, k_i, lam, ns, nk)[0])(iv).steer.vectors
    tx = optax.apply_if_finite(optax.sgd(1.0), 10)  # the update is minus the gradient
    step = TS.compile_step(cfg, opts, tx, donate=False)
    new, m = step(TS.init_state(iv, tx), w, sft, kl, jnp.float32(lam))
    np.testing.assert_allclose(np.asarray(iv.steer.vectors - new.params.steer.vectors), np.asarray(ref),
                               rtol=1e-4, atol=1e-7)
    assert float(m["kl"]) > 0  # the logged KL stays the step's token mean
    with pytest.raises(ValueError, match="kl_mean_over must be one of"):
        TS.StepOptions(kl_mean_over="rows")


def test_shared_prefix_layers_and_entry(tiny):
    hf, cfg, w = tiny
    steer = lambda hook, layers=(1,): init_steering(cfg, layers=layers, alpha=2.0, hook=hook)
    lora = init_lora(cfg, jax.random.PRNGKey(0), rank=1, alpha=1.0, modules=("o_proj",), layers=(0, 2))
    additive = not cfg.post_mlp_norm
    assert shared_prefix_layers(None, cfg) == 0
    assert shared_prefix_layers(Interventions(steer=steer("block_out")), cfg) == 2
    assert shared_prefix_layers(Interventions(steer=steer("mlp_out")), cfg) == (2 if additive else 1)
    assert shared_prefix_layers(Interventions(steer=steer("block_out", (0, 2))), cfg) == 1
    assert shared_prefix_layers(Interventions(lora=lora, steer=steer("block_out")), cfg) == 0
    # run_suffix from the frozen residual entering layer 2 adds the layer-1 vector at that boundary
    # (through the block's hook), and from layer 1 runs the steered block itself
    iv = Interventions(steer=steer("block_out").replace(vectors=jnp.ones((1, cfg.d_model))))
    x = jax.random.normal(jax.random.PRNGKey(5), (1, 4, cfg.d_model))
    mask = jnp.ones((1, 4), bool)
    pos = M.default_positions(mask)
    np.testing.assert_allclose(np.asarray(M.run_suffix(w, cfg, x, pos, mask, 2, iv)),
                               np.asarray(M.run_layers(w, cfg, x + 2.0, pos, mask, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(M.run_suffix(w, cfg, x, pos, mask, 1, iv)),
                               np.asarray(M.run_layers(w, cfg, x, pos, mask, 1, None, iv)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="shared prefix of this intervention ends at layer 2"):
        M.run_suffix(w, cfg, x, pos, mask, 3, iv)


# -- steer_rows: upstream's hook steered row 0 of each batch only ---------------------------------


def _upstream_loss_and_grad(hf, layer, alpha, v, sft_rows, kl_tokens, kl_mask, lam, rows):
    """PyTorch reference of one training micro-batch: CE (token mean over the loss mask) + lam *
    upstream's compute_kl_divergence (F.kl_div summed over the mask expanded over V, divided by its
    sum), with upstream's forward hook on down_proj; `rows` "first" does what upstream's
    steering_vector_module.py does, in place on the [B, T, D] output: `output[0] = output[0] + ...`."""
    vec = torch.tensor(v, requires_grad=True)
    enabled = [True]

    def hook(mod, inp, output):
        if not enabled[0]:
            return output
        if rows == "first":
            output[0] = output[0] + alpha * vec.unsqueeze(0).unsqueeze(0)
            return output
        return output + alpha * vec

    handle = hf.model.layers[layer].mlp.down_proj.register_forward_hook(hook)
    try:
        ce = _torch_ce(hf, *sft_rows)
        ids, am = torch.tensor(kl_tokens, dtype=torch.long), torch.tensor(kl_mask, dtype=torch.long)
        adapted = hf(input_ids=ids, attention_mask=am).logits
        enabled[0] = False
        with torch.no_grad():
            base = hf(input_ids=ids, attention_mask=am).logits
        kl = torch.nn.functional.kl_div(torch.log_softmax(adapted, -1), torch.softmax(base, -1), reduction="none")
        m = am.unsqueeze(-1).expand_as(kl).float()
        loss = ce + lam * (kl * m).sum() / m.sum()
        loss.backward()
    finally:
        handle.remove()
    return loss.item(), vec.grad.numpy()


def _steer_rows_case(cfg, w, layer, prefix):
    """A micro-batch of 2 SFT rows and a KL batch of 8 right-padded rows (upstream's sizes), with
    the frozen prefix computed in the step, or taken from the frozen-model cache ("cached")."""
    sft_rows = _sft_rows(cfg, 11, b=2)
    kt, km = padded_batch(np.random.default_rng(12), cfg.vocab_size, [9, 5, 12, 7, 3, 10, 6, 8], "right")
    sv = init_steering(cfg, layers=(layer,), alpha=4.0)
    k = layer if prefix == "block" else shared_prefix_layers(Interventions(steer=sv), cfg)
    sft, kl = _batch(*sft_rows), TS.KLBatch(tokens=jnp.asarray(kt), mask=jnp.asarray(km))
    if prefix == "cached":
        sft = sft.replace(prefix=TS.frozen_outputs(w, cfg, sft.tokens, sft.mask, k, False)[0])
        xk, xb = TS.frozen_outputs(w, cfg, kl.tokens, kl.mask, k, True)
        kl = kl.replace(prefix=xk, base_hidden=xb)
    return sft_rows, (kt, km), sft, kl, sv, k


@pytest.fixture(scope="module")
def qwen2():
    hf = build_hf(qwen2_config(tied=False), seed=33)
    return (hf, *to_emjax(hf))


@pytest.mark.parametrize("prefix", ["block", "cached"])
def test_steer_rows_match_upstream_hook(qwen2, prefix):
    hf, cfg, w = qwen2
    layer, lam = 1, 1e5  # the KL term is then of the order of the CE
    v = np.random.default_rng(10).normal(size=cfg.d_model).astype(np.float32) * 0.1
    sft_rows, (kt, km), sft, kl, sv, k = _steer_rows_case(cfg, w, layer, prefix)
    iv = Interventions(steer=sv.replace(vectors=jnp.asarray(v)[None]))
    n_sft, n_kl = jnp.float32(sft_rows[3].sum()), jnp.float32(km.sum())
    got = {}
    for rows in ("first", "all"):
        opts = TS.StepOptions(first_layer=k, kl_reduction="upstream", steer_rows=rows)
        fn = lambda p: TS.micro_loss(p, w, cfg, opts, sft, kl, jnp.float32(lam), n_sft, n_kl)
        (loss, m), g = jax.jit(jax.value_and_grad(fn, has_aux=True))(iv)
        want, want_g = _upstream_loss_and_grad(hf, layer, 4.0, v, sft_rows, kt, km, lam, rows)
        np.testing.assert_allclose(float(loss), want, rtol=1e-5, err_msg=rows)
        np.testing.assert_allclose(np.asarray(g.steer.vectors[0]), want_g, rtol=1e-3, atol=1e-5, err_msg=rows)
        got[rows] = float(loss), float(m["sft_sum"]), float(m["kl_sum"])
    # the KL term weighs in, and "all" steers rows 1.. too: both terms differ
    assert lam * got["first"][2] / (n_kl * cfg.vocab_size) > 0.1 * got["first"][0]
    assert got["all"][1] != pytest.approx(got["first"][1], rel=1e-3)
    assert got["all"][2] > 2 * got["first"][2]


def test_steer_rows_first_is_the_global_row_under_a_mesh_and_vmap(qwen2):
    """Rows sharded over data:2 (KL rows 0 and 4 are each device's local row 0) and a vmap over runs
    (the step of VmappedTrainer) steer the micro-batch's row 0, as on one device for one run."""
    from emjax.model.mesh_plan import mesh_context, put_rows
    from emjax.model.sharding import make_mesh
    from emjax.train.vmapped import compile_vmapped_step, stacked_state
    hf, cfg, w = qwen2
    sft_rows, (kt, km), sft, kl, sv, k = _steer_rows_case(cfg, w, 1, "shared")
    vs = jax.random.normal(jax.random.PRNGKey(4), (2, 1, cfg.d_model)) * 0.1
    opts = TS.StepOptions(first_layer=k, kl_reduction="upstream", steer_rows="first")
    args = (sft, kl, jnp.float32(1e5), jnp.float32(sft_rows[3].sum()), jnp.float32(km.sum()))
    loss = jax.jit(lambda p, s, q, *a: TS.micro_loss(p, w, cfg, opts, s, q, *a)[0])
    one = [float(loss(Interventions(steer=sv.replace(vectors=v)), *args)) for v in vs]
    mesh = make_mesh({"data": 2}, jax.devices()[:2])
    with mesh_context(mesh):
        sharded = float(loss(Interventions(steer=sv.replace(vectors=vs[0])), *put_rows(args[:2], mesh), *args[2:]))
    np.testing.assert_allclose(sharded, one[0], rtol=1e-5)
    # vmapped over two runs (one shared batch): each run's loss is its own single-run loss
    tx = lambda lr: TS.make_optimizer(lr, total_steps=4, warmup_steps=0)
    step = compile_vmapped_step(cfg, opts, tx, shared_batch=True, donate=False)
    state = stacked_state(TS.init_state(Interventions(steer=sv), tx(1.0)[0]), 2)
    state = state.replace(params=Interventions(steer=sv.replace(vectors=vs)))
    stack = lambda b: jax.tree.map(lambda x: x[None], b)
    _, m = step(state, w, stack(sft), stack(kl), jnp.full((2,), 1e5), jnp.full((2,), 1e-2))
    np.testing.assert_allclose(np.asarray(m["loss"]), one, rtol=1e-5)


def test_step_options_refuse_unknown_steer_rows():
    with pytest.raises(ValueError, match="steer_rows must be one of"):
        TS.StepOptions(steer_rows="row0")


@pytest.mark.parametrize("total, warmup", [(12, 5), (12, 0), (4, 5), (5, 5)])
def test_schedule_is_hf_linear_with_warmup(total, warmup):
    """lr(step) of `make_optimizer` is transformers' get_linear_schedule_with_warmup (written out
    here), a warmup longer than the run included."""
    _, schedule = TS.make_optimizer(2e-5, total_steps=total, warmup_steps=warmup)
    hf = lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    np.testing.assert_allclose([float(schedule(s)) for s in range(total)], [2e-5 * hf(s) for s in range(total)],
                               rtol=1e-6, atol=1e-12)

