"""`emjax judge --local MODEL`: the judge stage with a local model scoring by prefill, no API.

    stats = judge_local(AnswerSelection(["answers.jsonl"], ["first_plot_questions.yaml"]),
                        "judgements.jsonl", "/models/Qwen2.5-14B-Instruct", dtype="bfloat16")

Same tasks, prompts and cache keys as the API judge (`emjax.eval.judge.tasks.build_tasks`), with
the judge model name `local:<model name>` (override with `judge_model`); same result store, so a
rerun skips every key already scored (when none is left, the judge model is not even loaded), and
`emjax report --judge-model local:<name>` reads the lines. Each prompt is the filled template as
one user message through the model's chat template with the generation prompt; its answer
distribution is computed exactly (`tree`, `forward`).

Pending tasks are taken `window` at a time, tokenised, sorted by length and run in batches of
consecutive prompts padded to a length bucket (`records.plan_batches`); each batch's lines are
appended as soon as it finishes. Where the window's prompts share leading tokens (the chat
header, the template's head and the question, before the answer), each shared prefix is run once
and the prompts' remaining tokens attend to its cached keys and values (`prefix`; off with
`share_prefix=False`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from emjax.checkpoints.load import LazyModel, LoadedModel, model_on_mesh, source_name
from emjax.errors import EmjaxError
from emjax.eval.judge.scoring import MIN_NUMERIC_MASS, scoring_rule
from emjax.eval.checks import check_metrics
from emjax.eval.conventions import DEFAULT_METRICS
from emjax.eval.judge.stage import check_outputs, check_something_to_judge
from emjax.eval.judge.store import ResultStore
from emjax.eval.judge.runner import n_other_scoring, other_scoring_warning, pending_tasks
from emjax.eval.judge.tasks import MIN_VALID_JUDGE_PARAMS, build_tasks, questions_by_id, resolve_template
from emjax.inference.local_judge.forward import JUDGE_ATTENTION, TreeArrays, cache_prefixes, score_batches
from emjax.inference.local_judge.prefix import SharedPrefix, group_chunks, plan_shared_prefix
from emjax.inference.local_judge.records import Batch, local_record, plan_batches
from emjax.inference.local_judge.tree import answer_options, judge_tree, template_terminator
from emjax.eval.output_lock import output_lock
from emjax.eval.rescue import write_failure
from emjax.eval.selection import AnswerSelection, load_selection
from emjax.model.config import ModelConfig, dtype_from_name, resolve_dtype
from emjax.model.mesh_plan import is_writer
from emjax.model.schema import Weights, num_params
from emjax.timings import Timings, phase

log = logging.getLogger("emjax.judge")



class LocalJudgeError(EmjaxError, ValueError):
    """A local judge that cannot score these prompts (no tokenizer, bad settings)."""


@dataclasses.dataclass(frozen=True)
class LocalJudgeConfig:
    """Knobs of a local judge run.

    Attributes:
      dtype: "float32", "bfloat16", or "auto" (bfloat16 on GPU/TPU, float32 on CPU).
      batch_size: prompts per forward call (rows).
      pad_to: prompt lengths are rounded up to a multiple of this (one compile per bucket).
      max_batch_tokens: cap on rows * (bucket length + tree nodes): long buckets get fewer rows.
      window: pending tasks tokenised and sorted at a time (bounds host memory).
      min_mass: upstream's 0.25: no score below this numeric mass.
      limit: score at most this many pending tasks.
      attention: the prompt's attention, "auto" (cuDNN's flash kernel on GPUs where it applies, else
        XLA), "xla", "cudnn", or "joint" (one XLA attention over prompt + tree; `forward.judge_attention`).
      mesh: device mesh (`emjax.model.mesh_plan.plan_mesh`: None, "auto", "data:8"): prompt rows
        split over `data`, weights by their logical axes; process 0 writes the results.
      share_prefix: run the prompts' shared leading tokens once per window (`prefix`); exact
        either way, off only to compare (not with attention "joint").
      prefix_memory_gb: device memory for the cached prefixes of one window (more groups are run
        in several chunks). Ours: 2 GiB holds ~110 groups of 96 tokens of a 14B model (a window of
        1024 tasks has ~20-60), small beside the weights on any card that runs one.
    """

    dtype: str = "auto"
    batch_size: int = 8
    pad_to: int = 64
    max_batch_tokens: int = 32768
    window: int = 1024
    min_mass: float = MIN_NUMERIC_MASS
    progress: bool = True
    limit: int | None = None
    mesh: str | None = None
    attention: str = "auto"
    share_prefix: bool = True
    prefix_memory_gb: float = 2.0

    def __post_init__(self) -> None:
        if self.attention not in JUDGE_ATTENTION:
            raise LocalJudgeError(f"local judge attention must be one of {', '.join(JUDGE_ATTENTION)}, "
                                  f"got {self.attention!r}")
        for name in ("batch_size", "pad_to", "max_batch_tokens", "window", "prefix_memory_gb"):
            if not getattr(self, name) > 0:
                raise LocalJudgeError(f"local judge {name} must be positive, got {getattr(self, name)}")


def local_judge_name(model_name: str) -> str:
    """The judge model name in cache keys and result lines."""
    return f"local:{model_name}"


def judge_validity_warning(n_params: int, name: str) -> str | None:
    """The warning for a judge too small to be a valid judge (None for >= 7B parameters)."""
    if n_params >= MIN_VALID_JUDGE_PARAMS:
        return None
    return (f"judge {name} has {n_params / 1e9:.2f}B parameters: not a valid judge (the paper's judge is "
            f"GPT-4o; use >= {MIN_VALID_JUDGE_PARAMS / 1e9:.0f}B); its scores are a plumbing check only")


def judge_local(sel: AnswerSelection, out: str, model: str | LoadedModel | LazyModel, *,
                metrics: Sequence[str] = DEFAULT_METRICS, judge_model: str | None = None,
                config: LocalJudgeConfig = LocalJudgeConfig(), fsync: bool = False,
                stats_json: str | None = None, wait: bool = False) -> dict[str, Any]:
    """Scores the selected answers' judge tasks with a local model; returns the run's statistics.

    Args:
      model: a model source for `load_model` ("embedded", a Hugging Face folder, a .gguf file),
        loaded in `config.dtype`, or a LoadedModel (used as it is, placed on `config.mesh`).
      judge_model: the name in cache keys; default `local:<model name>`.
      wait: wait for another process holding the output's lock instead of raising OutputBusyError.
    Every input is checked before the model loads (outputs, question files, metrics, answers).
    Stats: n_tasks / n_cached / n_pending / n_ok / n_score_none like the API run, the judge
    (name, source, dtype, parameters; not when nothing was pending), the scoring tree, `timings`
    (`emjax.timings`), and `warnings`.
    """
    timings = Timings()
    with timings.running():
        with phase("data"):  # every input checked, and the pending tasks, before the model loads
            check_outputs(sel, out, stats_json)
            answers, questions, fallback = load_selection(sel)
            check_metrics(list(metrics), set(fallback), where="--questions and --judge-prompts")
            if judge_model is None:
                judge_model = local_judge_name(_model_name(model))
            plan = build_tasks(answers, questions, list(metrics), judge_model, fallback)
            check_something_to_judge(sel, len(answers), len(plan.tasks), metrics)
        with output_lock(out, wait=wait) if is_writer() else contextlib.nullcontext():
            stats = _judge_locked(sel, out, model, plan, answers, questions, fallback, judge_model, config, fsync)
    stats["timings"] = timings.report()
    if stats_json:
        with open(stats_json, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2)
    return stats


def _judge_locked(sel: AnswerSelection, out: str, model: str | LoadedModel | LazyModel, plan: Any, answers: list,
                  questions: list, fallback: dict[str, str], judge_model: str, config: LocalJudgeConfig,
                  fsync: bool) -> dict[str, Any]:
    """`judge_local` once its inputs are checked and the output is locked."""
    with phase("data"):
        store = ResultStore(out, fsync=fsync)
        pending = pending_tasks(plan.tasks, store)
        if config.limit is not None:
            pending = pending[:max(0, config.limit)]
    stats: dict[str, Any] = {
        "n_answers": len(answers), "n_answer_metric_pairs": plan.n_pairs, "n_tasks": len(plan.tasks),
        "n_cached": len(plan.tasks) - len(pending), "n_pending": len(pending), "n_ok": 0, "n_score_none": 0,
        "judge_model": judge_model, "prompt_tokens": 0, "seconds": 0.0, "warnings": [], "results": out,
        "n_left_failed": 0, "report": f"emjax report ... --judge-model '{judge_model}' --judgements {out}"}
    stats["n_cached_other_scoring"] = n_other_scoring(plan.tasks, pending, store, scoring_rule(config.min_mass))
    if stats["n_cached_other_scoring"]:
        stats["warnings"].append(other_scoring_warning(stats["n_cached_other_scoring"]))
        log.warning("%s", stats["warnings"][-1])
    if pending:
        _score(model, questions, fallback, plan.tasks, store, pending, config, stats)
    else:
        print(f"finished: all {len(plan.tasks)} tasks of {judge_model} already scored in {out}")
    return stats


def _model_name(model: str | LoadedModel | LazyModel) -> str:
    """The judge's model name without loading it (a source's folder name or GGUF header)."""
    return source_name(model) if isinstance(model, str) else model.name


def _score(model: str | LoadedModel | LazyModel, questions, fallback: dict[str, str], tasks: Sequence[Any],
           store: ResultStore, pending: Sequence[Any], config: LocalJudgeConfig, stats: dict[str, Any]) -> None:
    """Loads the judge and scores the pending tasks (of all `tasks`), adding to `stats`."""
    with phase("load"):
        dtype = dtype_from_name(resolve_dtype(config.dtype)) if isinstance(model, str) else None
        model, _ = model_on_mesh(model, config.mesh, dtype=dtype, progress=config.progress)
    dtype = str(model.weights.embed.dtype)
    if model.tokenizer is None:
        raise LocalJudgeError(f"{model.source}: the local judge needs the model's chat tokenizer")

    with phase("data"):
        by_id = questions_by_id(questions)
        options = {t.key: answer_options(resolve_template(by_id[t.question_id], t.metric, fallback) or "")
                   for t in tasks}
        tok, n_params = model.tokenizer, num_params(model.cfg)
        tree = judge_tree(tok, [o for t in tasks for o in options[t.key]])
    warnings = [w for w in [judge_validity_warning(n_params, stats["judge_model"]), _terminator_warning(tok)] if w]
    for w in warnings:
        log.warning("%s", w)
    judge = {"judge_source": model.source, "judge_dtype": dtype, "judge_params": n_params}
    stats.update(judge, tree=tree.describe(), warnings=stats["warnings"] + warnings, compiled_shapes=[],
                 terminators={int(i): tok.decode([i], skip_special_tokens=False) for i in tok.stop_ids})
    t0 = time.time()
    with phase("compute"):
        _run(pending, options, store, model, tree, judge, config, stats)
    stats["seconds"] = round(time.time() - t0, 2)
    stats["compiled_shapes"] = sorted(stats["compiled_shapes"])


def _terminator_warning(tok: Any) -> str | None:
    end = template_terminator(tok)
    if end is None or end in tok.stop_ids:
        return None
    return (f"the chat template ends an assistant turn with token {end} "
            f"({tok.decode([end], skip_special_tokens=False)!r}), which is not among the stop ids "
            f"{list(tok.stop_ids)}: answer probabilities use the stop ids")


def _run(pending: Sequence[Any], options: dict[str, tuple[str, ...]], store: ResultStore, model: LoadedModel,
         tree: Any, judge: dict[str, Any], config: LocalJudgeConfig, stats: dict[str, Any]) -> None:
    from tqdm.auto import tqdm

    tok = model.tokenizer
    arrays = TreeArrays.of(tree)
    stats.update(compiled_shapes=set(), device_tokens=0)
    bar = tqdm(total=len(pending), unit="prompt", desc="local judge", disable=not config.progress,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for start in range(0, len(pending), config.window):
            window = pending[start:start + config.window]
            with phase("data"):
                prompts = [tok.encode_chat([{"role": "user", "content": t.prompt}], add_generation_prompt=True)
                           for t in window]
            for batch, lp in score_window(model.weights, model.cfg, prompts, arrays, tok.stop_ids, tok.vocab_size,
                                          config, stats):
                records = [local_record(window[i], row, tree, options[window[i].key], judge, len(prompts[i]),
                                        config.min_mass) for row, i in zip(lp, batch.indices)]
                for k, (rec, i) in enumerate(zip(records, batch.indices)):
                    if is_writer():  # every process scores; process 0 writes
                        try:
                            store.append(rec)
                        except OSError as e:  # the batch's unwritten scores are saved elsewhere
                            raise write_failure(store.path, e, records[k:], "local judge score") from None
                    stats["n_ok"] += 1
                    stats["n_score_none"] += rec["score"] is None
                    stats["prompt_tokens"] += len(prompts[i])
                bar.update(len(batch.indices))
    finally:
        bar.close()
        stats["compiled_shapes"] = [list(s) for s in stats["compiled_shapes"]]


def score_window(weights: Weights, cfg: ModelConfig, prompts: Sequence[Sequence[int]], tree: TreeArrays,
                 stop_ids: Sequence[int], vocab_limit: int, config: LocalJudgeConfig,
                 stats: dict[str, Any] | None = None) -> Iterator[tuple[Batch, np.ndarray]]:
    """(batch, [rows, S] log-probabilities) for one window's prompts, batch by batch (indices into
    `prompts`), one batch in flight; with a shared prefix (`prefix.plan_shared_prefix`), chunk by
    chunk of prefix groups. Adds to `stats` (if given): compiled_shapes (a set of (rows, length)
    and, with a shared prefix, (rows, length, Lp)), device_tokens (tokens the device ran, padding,
    tree nodes and prefix passes included) and shared_prefix (windows, saved_tokens, lengths and the
    prefix passes' (groups, Lp) shapes)."""
    stats = {} if stats is None else stats
    shapes = stats.setdefault("compiled_shapes", set())
    stats.setdefault("device_tokens", 0)
    record = stats.setdefault("shared_prefix", {"windows": 0, "saved_tokens": 0, "lengths": [], "prefix_shapes": []})
    n_nodes = tree.node_tokens.shape[0]
    plan_rows = lambda lengths: plan_batches(lengths, batch_size=config.batch_size, pad_to=config.pad_to,
                                             max_batch_tokens=config.max_batch_tokens, n_nodes=n_nodes)

    def planned(batches: list[Batch], *prefix_len: int) -> list[Batch]:
        shapes.update((b.rows, b.length, *prefix_len) for b in batches)
        stats["device_tokens"] += sum(b.rows * (b.length + n_nodes) for b in batches)
        return batches

    plan = plan_shared_prefix(prompts) if config.share_prefix and config.attention != "joint" else None
    if plan is None:
        batches = planned(plan_rows([len(p) for p in prompts]))
        yield from zip(batches, score_batches(weights, cfg, (([prompts[i] for i in b.indices], b.rows, b.length)
                                                             for b in batches),
                                              tree, stop_ids, vocab_limit, attention=config.attention))
        return
    record["windows"] += 1
    record["saved_tokens"] += plan.saved_tokens()
    record["lengths"] = sorted(set(record["lengths"]) | {plan.length})
    for ids, rows in group_chunks(plan, _max_groups(cfg, weights, plan, config)):
        prefix = cache_prefixes(weights, cfg, [plan.groups[g] for g in ids], rows=PREFIX_ROWS,
                                attention=config.attention)
        if [prefix.k.shape[1], plan.length] not in record["prefix_shapes"]:
            record["prefix_shapes"].append([prefix.k.shape[1], plan.length])
        stats["device_tokens"] += prefix.k.shape[1] * plan.length
        bodies = [prompts[i][plan.length:] for i in rows]
        batches = planned(plan_rows([len(b) for b in bodies]), plan.length)
        work = (([bodies[j] for j in b.indices], b.rows, b.length, [plan.row_group[rows[j]] - ids[0] for j in b.indices])
                for b in batches)
        scored = score_batches(weights, cfg, work, tree, stop_ids, vocab_limit, attention=config.attention,
                               prefix=prefix)
        for b, lp in zip(batches, scored):
            yield Batch(tuple(rows[j] for j in b.indices), b.rows, b.length), lp


# Prefix groups run as one call are padded to a multiple of this (fewer compiled shapes; ours)
PREFIX_ROWS = 8


def _max_groups(cfg: ModelConfig, weights: Weights, plan: SharedPrefix, config: LocalJudgeConfig) -> int:
    """Groups whose cached keys and values fit `config.prefix_memory_gb`, a multiple of PREFIX_ROWS."""
    per_group = 2 * cfg.n_layers * plan.length * cfg.n_kv_heads * cfg.head_dim * weights.embed.dtype.itemsize
    fits = int(config.prefix_memory_gb * 2**30 // per_group)
    return max(PREFIX_ROWS, fits // PREFIX_ROWS * PREFIX_ROWS)
