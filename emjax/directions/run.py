"""The `emjax directions` stages: typed functions that read inputs, call the library and write
tables, plots and files. Each returns a JSON-able summary (also written as summary.json).

    mean_diff_stage(model, set_a, set_b, out)       # directions.safetensors, norms plot
    compare_stage(model, "general=...,md=...", out)  # cosines.csv / .md / .png
    gradient_stage(model, "general=...,narrow=...", out, data="sample:bad_medical")
    drift_stage(run_dir)                             # run_dir/drift/drift.csv / .png
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
import re
from typing import Sequence

import numpy as np

from emjax.checkpoints.load import LoadedModel, load_model
from emjax.data.conversations import read_chat_jsonl
from emjax.data.locations import data_dir as default_data_dir
from emjax.data.mixtures import resolve_data_spec
from emjax.data.tokenize import padded_batches, tokenize_sft
from emjax.directions import compare as C
from emjax.directions import drift as DR
from emjax.directions import gradient as G
from emjax.directions.mean_diff import answer_means, balance, mean_difference
from emjax.directions.sources import DirectionError, load_direction_set, save_directions
from emjax.eval.records import AnswerRecord, read_answers
from emjax.interventions.files import load_intervention, load_interventions

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclasses.dataclass
class AnswerSet:
    """Answers to average over: answer JSONL files, optionally only one intervention's rows
    (`label`: the record's meta label or intervention field) and only rows whose judge scores meet
    `where` ("aligned<30,coherent>50"; needs `judgements` and `questions`); and/or chat JSONL
    files (`chats`: training-style {"messages": [...]} lines or sample:NAME, taken whole)."""

    answers: Sequence[str] = ()
    chats: Sequence[str] = ()
    label: str | None = None
    where: str | None = None
    judgements: Sequence[str] = ()
    questions: Sequence[str] = ()
    judge_prompts: Sequence[str] = ()
    judge_model: str | None = None

    def describe(self) -> dict:
        return {"answers": list(self.answers), "chats": list(self.chats), "label": self.label, "where": self.where,
                "judgements": list(self.judgements)}

    def conversations(self, data_dir: str) -> list[list[dict]]:
        """Every selected answer as a chat (system, user, assistant), then the chat files' rows."""
        out = [_chat(r) for r in select_answers(self)] if self.answers else []
        for spec in self.chats:
            out += [list(c) for c in read_chat_jsonl(resolve_data_spec(spec, data_dir))]
        return out


def _conditions(where: str) -> list[tuple[str, str, float]]:
    out = []
    for part in filter(None, (p.strip() for p in where.split(","))):
        m = re.fullmatch(r"([A-Za-z_][\w-]*)\s*(<=|>=|<|>)\s*(-?[\d.]+)", part)
        if not m:
            raise DirectionError(f"condition {part!r}: expected METRIC<VALUE (operators < <= > >=)")
        out.append((m.group(1), m.group(2), float(m.group(3))))
    return out


def select_answers(s: AnswerSet) -> list[AnswerRecord]:
    """The records of an `AnswerSet`, in file order."""
    records = read_answers(list(s.answers))
    if s.label is not None:
        records = [r for r in records if s.label in (r.meta.get("label"), r.intervention)]
    if not s.where:
        return records
    if not s.judgements or not s.questions:
        raise DirectionError(f"--where {s.where!r} needs the judge results (--judgements) and the question files")
    from emjax.eval.judge.join import scores_table
    from emjax.eval.selection import AnswerSelection, load_selection
    from emjax.eval.judge.store import ResultStore
    from emjax.eval.judge.tasks import DEFAULT_JUDGE_MODEL

    conds = _conditions(s.where)
    store = ResultStore(s.judgements[0])
    for extra in s.judgements[1:]:
        store.merge(ResultStore(extra))
    _, questions, fallback = load_selection(AnswerSelection(answers=list(s.answers), questions=list(s.questions),
                                                                judge_prompts=list(s.judge_prompts)))
    df = scores_table(records, questions, store, sorted({m for m, _, _ in conds}),
                      s.judge_model or DEFAULT_JUDGE_MODEL, fallback)
    keep = np.ones(len(df), bool)
    for metric, op, value in conds:  # a missing score (NaN) fails every comparison
        keep &= _OPS[op](df[metric].to_numpy(float), value)
    return [r for r, k in zip(records, keep) if k]


def _chat(r: AnswerRecord) -> list[dict]:
    system = [{"role": "system", "content": r.system}] if r.system else []
    return system + [{"role": "user", "content": r.question}, {"role": "assistant", "content": r.answer}]


def _write_summary(out: str, summary: dict) -> dict:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def _norm_plot(norms: np.ndarray, path: str, title: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(len(norms)), norms, marker="o", ms=3)
    ax.set_xlabel("layer (residual after the block)")
    ax.set_ylabel("||mean difference||")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def mean_diff_stage(model: LoadedModel, set_a: AnswerSet, set_b: AnswerSet, out: str, *, name: str = "mean_diff",
                    max_len: int = 512, batch_size: int = 8, intervention: str | None = None,
                    balance_seed: int | None = 0, data_dir: str | None = None) -> dict:
    """mean(set a) - mean(set b) of the block outputs over answer tokens, every layer.

    intervention: a steering file / LoRA folder active while collecting (upstream collects from the
    misaligned fine-tune). balance_seed: cut both sets to the smaller size (None: keep all).
    """
    data_dir = data_dir or default_data_dir()
    a, b = set_a.conversations(data_dir), set_b.conversations(data_dir)
    for label, rs, s in (("a", a, set_a), ("b", b, set_b)):
        if not rs:
            raise DirectionError(f"answer set {label} is empty after selection ({s.describe()})")
    if balance_seed is not None:
        a, b = balance(a, b, balance_seed)
    iv = load_intervention(intervention, model.cfg) if intervention else None
    ma = answer_means(model, a, max_len=max_len, batch_size=batch_size, interventions=iv, desc="activations a")
    mb = answer_means(model, b, max_len=max_len, batch_size=batch_size, interventions=iv, desc="activations b")
    diff = mean_difference(ma, mb)
    # rows_* count what was averaged: chats with no answer token within max_len are left out
    meta = {"model": model.name, "set_a": set_a.describe(), "set_b": set_b.describe(), "given_a": len(a),
            "given_b": len(b), "rows_a": ma.rows,
            "rows_b": mb.rows, "tokens_a": ma.tokens, "tokens_b": mb.tokens, "intervention": intervention,
            "balance_seed": balance_seed, "max_len": max_len,
            "definition": "mean over answer tokens of the residual after each block, set a minus set b"}
    path = save_directions(os.path.join(out, "directions.safetensors"), {name: diff}, meta)
    norms = np.linalg.norm(diff, axis=-1)
    plot = _norm_plot(norms, os.path.join(out, "mean_diff_norms.png"), f"{name}: a ({ma.rows}) - b ({mb.rows})")
    print(f"mean difference over {ma.rows} vs {mb.rows} answers ({ma.tokens} vs {mb.tokens} answer tokens); "
          f"largest at layer {int(norms.argmax())} (||d|| {norms.max():.3g}); written {path}:{name}")
    return _write_summary(out, {**meta, "file": path, "name": name, "norm_per_layer": norms.tolist(),
                                "plot": plot})


def compare_stage(model: LoadedModel, spec: str, out: str, *, layer: int | None = None) -> dict:
    """Cosines of every pair of the spec's directions at every common layer."""
    dirs = load_direction_set(spec, model.cfg)
    table = C.cosine_table(dirs)
    if table.empty:
        raise DirectionError("no two directions share a layer: nothing to compare")
    labels = list(dirs)
    layer = C.focus_layer(dirs) if layer is None else layer
    os.makedirs(out, exist_ok=True)
    table.to_csv(os.path.join(out, "cosines.csv"), index=False)
    md = C.markdown_matrix(table, labels, layer)
    note = (f"chance |cos| for unrelated directions in D={model.cfg.d_model}: {C.chance_abs_cosine(model.cfg.d_model):.3f}"
            + ("; LoRA directions have no sign: read |cos|" if table["sign_free"].any() else ""))
    with open(os.path.join(out, "cosines.md"), "w", encoding="utf-8") as f:
        f.write(md + "\n\n" + note + "\n")
    plot = C.plot_cosines(table, labels, layer, os.path.join(out, "cosines.png"))
    print(md)
    print(note)
    at = table[table["layer"] == layer]
    return _write_summary(out, {"layer": layer, "labels": labels, "sources": {k: d.source for k, d in dirs.items()},
                                "cosines_at_layer": {f"{r.a}/{r.b}": r.cosine for r in at.itertuples()},
                                "note": note, "table": os.path.join(out, "cosines.csv"), "plot": plot})


def _norms(text: str, reference: float) -> list[float]:
    """"0.5x,1x,2x" (multiples of `reference`) or "10,20" (absolute) -> norms."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            out.append(float(part[:-1]) * reference if part.endswith("x") else float(part))
        except ValueError:
            raise DirectionError(f"norm {part!r}: expected a number or a multiple like 2x") from None
    return out


def _sft_batches(model: LoadedModel, data: str, data_dir: str, n_rows: int, seed: int, max_len: int,
                 batch_size: int, loss_tokens: str) -> list[dict]:
    convs = read_chat_jsonl(resolve_data_spec(data, data_dir))
    idx = np.random.default_rng(seed).permutation(len(convs))[:n_rows]
    rows = tokenize_sft([convs[i] for i in idx], model.tokenizer, max_len, on_template_error="skip",
                        loss_tokens=loss_tokens).rows
    return padded_batches(rows, batch_size)


def gradient_stage(model: LoadedModel, spec: str, out: str, *, data: str = "sample:bad_medical",
                   data_dir: str | None = None, n_rows: int = 64, seed: int = 42, max_len: int = 256,
                   batch_size: int = 8, layer: int | None = None, norms: str = "0.5x,1x,2x",
                   hook: str = "mlp_out", loss_tokens: str = "assistant") -> dict:
    """The SFT-loss gradient at v = 0 and at equal norms along each direction of `spec`, projected
    on each. Norms "Nx" are multiples of the directions' mean norm at `layer`. loss_tokens: the
    tokens the loss is taken on, as the sweeps' `data.loss_tokens` ("assistant" or "all")."""
    dirs = load_direction_set(spec, model.cfg)
    if layer is None:
        common = set.intersection(*(set(d.vectors) for d in dirs.values()))
        if len(common) != 1:
            raise DirectionError(f"the directions share layers {sorted(common)}; choose one with --layer")
        layer = common.pop()
    missing = [k for k, d in dirs.items() if layer not in d.vectors]
    if missing:
        raise DirectionError(f"directions {missing} have no vector at layer {layer}")
    vecs = {k: d.vectors[layer] for k, d in dirs.items()}
    ref = float(np.mean([np.linalg.norm(v) for v in vecs.values()]))
    batches = _sft_batches(model, data, data_dir or default_data_dir(), n_rows, seed, max_len, batch_size,
                           loss_tokens)
    df = G.gradient_projections(model, batches, layer, vecs, _norms(norms, ref), hook)
    os.makedirs(out, exist_ok=True)
    df.to_csv(os.path.join(out, "gradient.csv"), index=False)
    md = G.markdown(df)
    with open(os.path.join(out, "gradient.md"), "w", encoding="utf-8") as f:
        f.write(md + "\n")
    print(md)
    return _write_summary(out, {"layer": layer, "hook": hook, "data": data, "n_rows": n_rows, "seed": seed,
                                "loss_tokens": loss_tokens, "reference_norm": ref,
                                "rows": df.to_dict(orient="records"),
                                "definition": "descent_e = -dL/dv . u_e (loss decrease per unit norm along e)"})


def drift_stage(run_dir: str, out: str | None = None, *, references: str | None = None,
                model: LoadedModel | None = None) -> dict:
    """Plots the drift a run logged; with `references` (and the model) also recomputes it from the
    run's snapshots and reports the largest difference."""
    out = out or os.path.join(run_dir, "drift")
    table = DR.drift_table(run_dir)
    os.makedirs(out, exist_ok=True)
    table.to_csv(os.path.join(out, "drift.csv"), index=False)
    plot = DR.plot_drift(table, os.path.join(out, "drift.png"), os.path.basename(os.path.normpath(run_dir)))
    summary = {"run": run_dir, "first": table.iloc[0].to_dict(), "last": table.iloc[-1].to_dict(), "plot": plot}
    if references:
        if model is None:
            raise DirectionError("recomputing drift from snapshots needs the model")
        snap = DR.snapshot_drift(run_dir, load_interventions(references, model.cfg), model.cfg)
        joined = table.merge(snap, on="step", suffixes=("", "_snap"))
        cols = [c for c in snap.columns if c != "step" and c in table.columns]
        summary["snapshot_check"] = {"steps": len(joined), "max_abs_diff": float(max(
            (np.abs(joined[c] - joined[c + "_snap"]).max() for c in cols), default=float("nan")))}
    print(table.to_string(index=False))
    return _write_summary(out, summary)


def load(model_source: str, dtype: str = "float32") -> LoadedModel:
    from emjax.model.config import dtype_from_name
    return load_model(model_source, dtype=dtype_from_name(dtype))



def check_stage_inputs(stage: str, *, model: str | None, out: str | None = None, spec: str | None = None,
                       data: str | None = None, data_dir: str | None = None, run_dir: str | None = None,
                       files: Sequence[str] = (), norms: str | None = None, layer: int | None = None,
                       where: dict[str, str | None] | None = None, judgements: Sequence[str] = ()) -> None:
    """What a directions stage reads, checked before the model loads: the model source (its
    folder's config.json and tokenizer files, no weight), the output folder, the directions of
    `spec` (small files, read against the model's shapes), the training rows of `data`, the run
    folder of drift, the --norms list, --layer against the model's depth, and each --X-where
    condition (which needs --judgements). An EmjaxError naming the option or file otherwise."""
    if norms is not None:
        values = _norms(norms, 1.0)
        if not values or not all(math.isfinite(n) and n >= 0 for n in values):
            raise DirectionError(f"--norms {norms!r}: give finite norms >= 0, e.g. 0.5x,1x,2x or 10,20")
    for option, text in (where or {}).items():
        if text:
            _conditions(text)
            if not judgements:
                raise DirectionError(f"{option} {text!r} selects answers by their judge scores: give --judgements")
    from emjax.checkpoints.load import source_config
    from emjax.data.locations import check_writable_dir

    cfg = source_config(model) if model is not None else None
    if layer is not None and cfg is not None and layer >= cfg.n_layers:
        raise DirectionError(f"--layer {layer} is out of range for a {cfg.n_layers}-layer model")
    if out is not None:
        check_writable_dir(out, "--out")
    if spec is not None and cfg is not None:
        load_direction_set(spec, cfg)
    if data is not None:
        read_chat_jsonl(resolve_data_spec(data, data_dir or default_data_dir()))
    for f in files:  # answers, judgements, question files: read by the stage after the model loads
        if f.startswith("sample:"):
            continue
        if not os.path.isfile(f):
            raise DirectionError(f"{f}: no such file")
    if run_dir is not None and not os.path.isdir(run_dir):
        raise DirectionError(f"{run_dir}: no such run folder (emjax directions drift takes a training run's output_dir)")
