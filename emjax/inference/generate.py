"""`emjax generate`: answers to evaluation questions, with full provenance, for the judge stage.

    generate("embedded", "questions.yaml", "answers.jsonl", intervention="runs/x/steering.safetensors")
    generate("embedded", "questions.yaml", "answers.jsonl",
             interventions={"chat": None, "general": "runs/g/steering.safetensors",
                            "general x2": ("runs/g/steering.safetensors", 2.0), "narrow": "runs/n/lora"})

Every (question, paraphrase, sample, intervention) becomes one `AnswerRecord` line in the output
JSONL (model, intervention file and scale, settings hash, seed, indices; the label in
`meta["label"]`). Rows already in the output with the same settings (one hash per intervention)
are skipped, so an interrupted run resumes where it stopped; when no row is left, the model is
not loaded at all (the questions and the settings hash decide it).

Sampling runs at evaluation scale: the rows of all interventions go through the KV-cache sampler
together, in batches of up to `SamplingSettings.batch_size` rows (by default as many as the device
memory allows), each row under its own intervention (`emjax.model.row_hooks`); the samples of a
question under one intervention share one prefill of its prompt.

Reproducibility: every answer's random draws come from (seed, question id, paraphrase, sample
index) alone (`row_id`), so an answer does not depend on the batch size, on which other
interventions or questions are sampled in the same call, or on where a resumed run restarted
(up to the rounding of the logits, which may differ between batch shapes on GPUs). The same
sample index of a question gets the same draws under every intervention: differences between
interventions come from the interventions, not from the noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
from typing import Mapping, Sequence, Union

import numpy as np

from tqdm.auto import tqdm

from emjax.arg_types import SEED_LIMIT
from emjax.checkpoints.load import LazyModel, LoadedModel, check_source, model_on_mesh
from emjax.errors import EmjaxError
from emjax.eval.checks import check_include_globs, check_kinds, check_output_file
from emjax.eval.output_lock import output_lock
from emjax.eval.questions import KINDS, load_questions, paper_default, select_questions
from emjax.eval.records import AnswerRecord, append_answers, read_answers
from emjax.eval.rescue import write_failure
from emjax.interventions.files import load_intervention, load_steering
from emjax.interventions.peft import AdapterError
from emjax.model import row_hooks as R
from emjax.model.ablation import DirectionAblation
from emjax.model import sampling as S
from emjax.model.config import ModelConfig, dtype_from_name, resolve_dtype
from emjax.model.mesh_plan import is_writer
from emjax.timings import Timings, phase


class MixedSettingsError(EmjaxError, ValueError):
    """The output already holds answers to the same questions and samples under other settings."""


class SamplingSettingsError(EmjaxError, ValueError):
    """Sampling settings out of range (no answer could be sampled, or not as asked)."""


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How answers are sampled. Defaults are the paper's (docs/upstream.md section 1): 50 samples per
    paraphrase, temperature 1, top-p 1, 600 new tokens; batch size and seed are ours.

    batch_size: rows per sampler call; 0 (default) sizes it from the device memory
    (`emjax.model.sampling.max_rows`, at most AUTO_MAX_ROWS; on a CPU at most AUTO_CPU_ROWS, and
    AUTO_CPU_ROWS where no memory figure is known). The batch layout does not change the answers.
    """

    samples: int = 50
    max_new_tokens: int = 600
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [(name, v, want) for name, v, ok, want in (
            ("samples", self.samples, self.samples >= 1, ">= 1"),
            ("max_new_tokens", self.max_new_tokens, self.max_new_tokens >= 1, ">= 1"),
            ("temperature", self.temperature, math.isfinite(self.temperature) and self.temperature >= 0, ">= 0"),
            ("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),  # NaN fails every comparison
            ("top_k", self.top_k, self.top_k >= 0, ">= 0"),
            ("batch_size", self.batch_size, self.batch_size >= 0, ">= 0"),
            ("seed", self.seed, 0 <= self.seed < SEED_LIMIT, "in [0, 2**32)")) if not ok]
        if bad:
            name, v, want = bad[0]
            raise SamplingSettingsError(f"sampling {name} must be {want}, got {v}")


AUTO_MAX_ROWS = 512  # past ~300 rows a 14B decode step is compute-bound: larger batches gain little
AUTO_CPU_ROWS = 64
# Settings every answer's hash covers besides the call's own: the sampler's way of drawing
# (per-row keys from the answer's indices; answers of the earlier per-batch seeds hash differently).
RNG_SCHEME = "row-keys-v1"

InterventionSpec = Union[str, None, tuple]  # a path, None (the chat model), or (path, scale)


def row_id(question_id: str, paraphrase_index: int, sample_index: int) -> int:
    """The answer's random-stream id: a stable 32-bit hash of its indices."""
    key = f"{question_id}\x00{paraphrase_index}\x00{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def _specs(intervention: str | None, interventions: Mapping[str, InterventionSpec] | None,
           scale: float) -> dict[str, tuple[str | None, float]]:
    """label -> (path or None, scale); the single `intervention` form has its path as label."""
    if interventions is None:
        return {intervention or "": (intervention, scale)}
    if intervention is not None:
        raise ValueError("give either intervention= or interventions=, not both")
    if not interventions:
        raise ValueError("interventions= is empty: give {label: path or None}")
    out, seen = {}, {}
    for label, spec in interventions.items():
        path, sc = (spec if isinstance(spec, tuple) else (spec, scale))
        path, sc = (None, 1.0) if path is None else (os.fspath(path), float(sc))
        if (path, sc) in seen:
            raise ValueError(f"interventions {seen[(path, sc)]!r} and {label!r} are the same "
                             f"({path or 'the chat model'} x{sc:g}): their answers would be identical")
        seen[(path, sc)] = label
        out[str(label)] = (path, sc)
    return out


def _batch_rows(sampling: SamplingSettings, model: LoadedModel, prompt_len: int, units: int) -> int:
    """Rows per sampler call; `units` distinct prompts in the whole run, of at most `prompt_len`
    tokens. A call prefills only its own rows' prompts, at most one per row."""
    if sampling.batch_size > 0:
        return sampling.batch_size
    device = next(iter(model.weights.embed.sharding.device_set))
    budget = S.default_memory_budget(device)
    if budget is None:
        return AUTO_CPU_ROWS
    fit = lambda prompt_rows: S.max_rows(model.cfg, prompt_len, sampling.max_new_tokens,  # noqa: E731
                                         model.weights.embed.dtype, budget[0], prompt_rows=prompt_rows,
                                         row_multiple=S.prompt_row_multiple(model.weights))
    # no call holds more rows than fit beside one prompt, so none holds more than min(units, that)
    # prompts: the rows that fit beside that many prompts fit every call
    rows = fit(min(units, fit(1)))
    return max(1, min(AUTO_CPU_ROWS if device.platform == "cpu" else AUTO_MAX_ROWS, rows))


def generate(model: str | LoadedModel | LazyModel, questions: str | Sequence[str], out: str, *,
             dtype: str = "auto", intervention: str | None = None,
             interventions: Mapping[str, InterventionSpec] | None = None, scale: float = 1.0,
             kinds: Sequence[str] | None = ("free_form",), include: Sequence[str] | None = None,
             exclude: Sequence[str] | None = None, sampling: SamplingSettings = SamplingSettings(),
             paper_questions: bool = True, ablation: DirectionAblation | None = None,
             ablation_name: str = "", mesh: str | None = None, wait: bool = False,
             set_aside: bool = False) -> dict:
    """Samples answers to the selected questions and appends them to `out`.

    Args:
      model: a model source ("embedded", a Hugging Face folder, a .gguf file) or a loaded model.
      questions: upstream YAML or JSONL question file(s).
      dtype: dtype a model source is loaded in ("auto": bfloat16 on GPU/TPU, float32 on CPU; the
        resolved name is what the records and the settings hash hold).
      intervention: a steering .safetensors file or a PEFT LoRA folder (None: the chat model);
        its update (steering v, every LoRA B) is multiplied by `scale`.
      interventions: several at once instead, {label: path, None (the chat model) or (path,
        scale)}; rows = questions x paraphrases x samples x interventions, sampled together.
      kinds / include / exclude: question kinds (None: all) and id globs to keep / drop.
      paper_questions: with no `include`, a file holding the paper's eight free-form questions
        (first_plot_questions.yaml) is cut down to those eight (False: every question of `kinds`).
      ablation: directions projected out of the residual stream on every row, under every
        intervention (`emjax.model.ablation`; the CLI's --ablate builds it from a spec, named by
        `ablation_name` in each record's meta). Part of the settings hash: answers with and
        without it never mix.
      mesh: device mesh (`emjax.model.mesh_plan.plan_mesh`: None, "auto", "data:8", ...): rows
        split over `data`, weights by their logical axes; answers do not depend on it (each row's
        draws come from its own id), and process 0 writes them.
      wait: when another process holds the output's lock (`emjax.eval.output_lock`), wait for it
        instead of raising OutputBusyError. Every input is checked before the model loads
        (`check_generate_inputs`); answers that cannot be written are saved elsewhere
        (`emjax.eval.rescue`) and the run stops.
      set_aside: when `out` holds answers to the same questions and samples under other settings
        (another temperature, a retrained intervention...), move it to `<stem>.earlier-<i>.jsonl`
        and sample afresh (the jobs, whose stages rerun when their settings change) instead of
        raising MixedSettingsError (the default: the two sets would be pooled).
    Returns {"questions", "generated", "skipped", "out"} counts (answers, all interventions) and
    the stage's "timings" (`emjax.timings`).
    """
    timings = Timings()
    with timings.running():
        with phase("data"):  # every input checked before the lock, the model load and any sampling
            check_generate_inputs(model, questions, out, intervention=intervention, interventions=interventions,
                                  scale=scale, kinds=kinds, include=include)
        with output_lock(out, wait=wait) if is_writer() else contextlib.nullcontext():
            with phase("data"):
                out_stats, work = _pending(model, questions, out, dtype, intervention, interventions, scale, kinds,
                                           include, exclude, sampling, paper_questions, ablation, set_aside)
            if work is not None:
                out_stats["generated"] = _sample(model, out, mesh, sampling, ablation, ablation_name, work)
    out_stats["timings"] = timings.report()
    return out_stats


def _question_paths(questions: str | Sequence[str]) -> list[str]:
    return [questions] if isinstance(questions, (str, os.PathLike)) else [os.fspath(q) for q in questions]


def _cheap_cfg(model: str | LoadedModel | LazyModel) -> ModelConfig | None:
    """The model's config where it comes without loading weights (a folder's config.json)."""
    if isinstance(model, LoadedModel):
        return model.cfg
    source = model if isinstance(model, str) else model.source
    if isinstance(model, LazyModel) and model.loaded:
        return model.cfg
    # a folder's config.json (its absence is reported by the load, when one is needed)
    return ModelConfig.from_hf(source) if os.path.isfile(os.path.join(source, "config.json")) else None


def check_intervention(path: str, cfg: ModelConfig | None) -> None:
    """An intervention exists and, for a steering file, its header and (tiny) tensor agree with each
    other and with `cfg` (hidden size, layers) when given; a LoRA folder has its adapter config."""
    if not os.path.exists(path):
        raise AdapterError(f"--intervention {path}: no such intervention file or folder")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise AdapterError(f"--intervention {path}: a folder without adapter_config.json is not a PEFT "
                               "LoRA adapter")
        return
    load_steering(path, cfg)


def check_generate_inputs(model: str | LoadedModel | LazyModel, questions: str | Sequence[str], out: str, *,
                          intervention: str | None = None,
                          interventions: Mapping[str, InterventionSpec] | None = None, scale: float = 1.0,
                          kinds: Sequence[str] | None = ("free_form",),
                          include: Sequence[str] | None = None) -> None:
    """What `generate` checks before it loads the model: the model source, the output (writable, none
    of the inputs), the question files, the kinds and --include globs, the interventions (headers
    against the model's hidden size where that is cheap) and the scale."""
    if isinstance(model, str):
        check_source(model)
    if not math.isfinite(scale):
        raise SamplingSettingsError(f"--scale must be a finite number, got {scale}")
    specs = _specs(intervention, interventions, scale)
    paths = [path for path, _ in specs.values() if path is not None]
    check_output_file(out, {"--questions": _question_paths(questions), "--intervention": paths})
    if kinds is not None:
        check_kinds(list(kinds), KINDS)
    loaded = load_questions(questions)
    check_include_globs(include, [q.id for q in loaded], where=", ".join(_question_paths(questions)))
    cfg = _cheap_cfg(model) if paths else None
    for path in paths:
        check_intervention(path, cfg)


def _content_sha256(path: str | None) -> str | None:
    """sha256 of what an intervention holds (a steering file; a LoRA folder's config and weights)."""
    if path is None:
        return None
    files = [path] if os.path.isfile(path) else [os.path.join(path, n) for n in ("adapter_config.json",
                                                                              "adapter_model.safetensors")]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def _set_aside(out: str) -> str:
    """Renames `out` to the first free `<stem>.earlier-<i><ext>` beside it; returns the new path."""
    stem, ext = os.path.splitext(out)
    i = 1
    while os.path.exists(f"{stem}.earlier-{i}{ext}"):
        i += 1
    os.replace(out, f"{stem}.earlier-{i}{ext}")
    return f"{stem}.earlier-{i}{ext}"


def _clashes(model, records: list, ours: set[str], specs: dict, jobs: list) -> tuple[str, list]:
    """(the model's name, the answers in `records` of this model and an intervention of `specs` to a
    question, paraphrase and sample of `jobs` under other settings: another temperature, seed,
    question file, a retrained intervention...). This run's answers would sit beside them, and the
    judge and the report would pool both."""
    names = [f"{path} x{sc:g}" if path else "" for path, sc in specs.values()]
    slots = {(names[k], q.id, pi, si) for q, pi, _, k, si in jobs}
    clash = [a for a in records if a.config_hash not in ours
             and (a.intervention, a.question_id, a.paraphrase_index, a.sample_index) in slots]
    if not clash:
        return "", []
    name = model.name if isinstance(model, (LoadedModel, LazyModel)) else LazyModel(model).name
    return name, [a for a in clash if a.model == name]


@dataclasses.dataclass
class _Pending:
    """The answers still to generate, decided before the model loads."""

    specs: dict[str, tuple[str | None, float]]  # label -> (intervention path or None, scale)
    hashes: list[str]  # settings hash per intervention
    jobs: list[tuple]  # (question, paraphrase index, paraphrase, intervention index, sample index)
    dtype: str


def _pending(model, questions, out, dtype, intervention, interventions, scale, kinds, include, exclude, sampling,
             paper_questions, ablation, set_aside: bool = False) -> tuple[dict, _Pending | None]:
    """The counts, and the answers still to generate (None: none), from the questions, the settings
    and `out` alone: no model is loaded."""
    specs = _specs(intervention, interventions, scale)
    if isinstance(model, str):
        check_source(model)  # a wrong source is named before the questions are read
        dtype = resolve_dtype(dtype)
    else:
        dtype = model.dtype_name if isinstance(model, LazyModel) else str(model.weights.embed.dtype)
    source = model if isinstance(model, str) else model.source
    loaded = load_questions(questions)
    if include is None and kinds is not None and paper_questions:
        include = paper_default(loaded)  # the paper's 8 questions of first_plot_questions.yaml
    selected = select_questions(loaded, kinds, include, exclude)
    base = {"model": source, "dtype": dtype, "questions": questions, **dataclasses.asdict(sampling),
            "rng": RNG_SCHEME}
    if ablation is not None:  # what is ablated, by value: the same spec over a retrained file differs
        digest = hashlib.sha256(np.asarray(ablation.units, np.float32).tobytes()).hexdigest()[:16]
        base["ablation"] = {"layers": list(ablation.layers), "units_sha256": digest}
    base.pop("batch_size")  # the batch layout does not change what is asked for
    # nor does the number of samples: sample i's draws depend on its own indices alone, so more
    # samples extend a file. What an intervention holds does: a file retrained in place gets new
    # answers. Answers of the older hashes (the sample count, no content) still count as done.
    legacy = dict(base)
    base.pop("samples")
    digest = lambda d, path, sc, **more: hashlib.sha256(json.dumps(  # noqa: E731
        {**d, "intervention": path, "scale": sc, **more}, sort_keys=True).encode()).hexdigest()[:16]
    hashes = [digest(base, path, sc, intervention_sha256=_content_sha256(path)) for path, sc in specs.values()]
    records = read_answers(out) if os.path.exists(out) else []
    of_hash = {h: k for k, h in enumerate(hashes)}
    for n in range(1, max([sampling.samples] + [a.sample_index + 1 for a in records]) + 1):  # any older count
        of_hash.update({digest({**legacy, "samples": n}, path, sc): k for k, (path, sc) in enumerate(specs.values())})

    def todo(records):
        done = {(of_hash[a.config_hash], a.question_id, a.paraphrase_index, a.sample_index)
                for a in records if a.config_hash in of_hash}
        # consecutive rows share (prompt, intervention): the sampler prefills them once
        return done, [(q, pi, p, k, si) for q in selected for pi, p in enumerate(q.paraphrases)
                      for k in range(len(specs)) for si in range(sampling.samples) if (k, q.id, pi, si) not in done]

    done, jobs = todo(records)
    name, clash = _clashes(model, records, set(of_hash), specs, jobs)
    if clash:
        a = clash[0]
        what = (f"{len(clash)} answers of {name}{' with ' + a.intervention if a.intervention else ''} to the same "
                f"questions and samples under other settings (e.g. {a.question_id}, paraphrase {a.paraphrase_index}, "
                f"sample {a.sample_index}; settings hash {a.config_hash})")
        if not set_aside:
            raise MixedSettingsError(f"{out} already holds {what}; the judge and the report would pool both: give "
                                     "another --out, or the settings those answers were sampled with")
        print(f"{out} held {what}: moved to {_set_aside(out)}; sampling afresh")
        done, jobs = todo([])
    stats = {"questions": len(selected), "generated": 0, "skipped": len(done), "out": out}
    if not jobs:
        print(f"finished: all {len(done)} answers of {len(selected)} questions x {len(specs)} interventions "
              f"already in {out}")
        return stats, None
    print(f"{len(selected)} questions x {len(specs)} interventions, {len(jobs)} answers to generate "
          f"({len(done)} already in {out})")
    return stats, _Pending(specs, hashes, jobs, dtype)


def _sample(model, out: str, mesh, sampling: SamplingSettings, ablation, ablation_name: str, pending: _Pending) -> int:
    """Samples the pending answers and appends their records to `out`; returns how many."""
    specs, hashes, jobs = pending.specs, pending.hashes, pending.jobs
    with phase("load"):
        model, _ = model_on_mesh(model, mesh, dtype=dtype_from_name(pending.dtype))
        labels = list(specs)
        ivs = [None if path is None else load_intervention(path, model.cfg, sc) for path, sc in specs.values()]
    with phase("data"):
        tok = model.tokenizer
        prompt_of = {}
        for q, pi, p, _, _ in jobs:
            if (q.id, pi) not in prompt_of:
                prompt_of[(q.id, pi)] = tok.prompt_ids(p, q.system)
    # one padded prompt length and one batch size for every call: one compiled program
    prompt_len = max(len(ids) for ids in prompt_of.values())
    units = len({(q.id, pi, k) for q, pi, _, k, _ in jobs})
    rows = _batch_rows(sampling, model, prompt_len, units)
    n_calls = -(-len(jobs) // rows)
    rows = -(-len(jobs) // n_calls)  # even batches; the last is padded with copies of its last row
    iset = R.intervention_set(model.cfg, ivs) if len(specs) > 1 and any(iv is not None for iv in ivs) else None
    with phase("compute"):
        bar = tqdm(total=len(jobs), desc="generate", unit="answer")
        for c in range(n_calls):
            chunk = jobs[c * rows: (c + 1) * rows]
            padded = chunk + [chunk[-1]] * (rows - len(chunk))
            members = {k for _, _, _, k, _ in padded}
            kw = {}
            if len(members) == 1:  # one intervention: the single-intervention path (no per-row gathers)
                kw["interventions"] = ivs[next(iter(members))]
            elif iset is not None:
                kw.update(interventions=iset, intervention_index=[-1 if ivs[k] is None else k for *_, k, _ in padded])
            outs = S.generate(model.weights, model.cfg, [prompt_of[(q.id, pi)] for q, pi, *_ in padded],
                              max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                              top_p=sampling.top_p, top_k=sampling.top_k, stop_ids=tok.stop_ids, seed=sampling.seed,
                              row_ids=[row_id(q.id, pi, si) for q, pi, _, _, si in padded], prompt_len=prompt_len,
                              vocab_limit=tok.vocab_size, ablation=ablation, **kw)[: len(chunk)]
            records = []
            for (q, pi, p, k, si), o in zip(chunk, outs):
                path, sc = specs[labels[k]]
                records.append(AnswerRecord(
                    question_id=q.id, paraphrase_index=pi, sample_index=si, question=p, answer=tok.decode(o),
                    system=q.system, model=model.name, intervention=(f"{path} x{sc:g}" if path else ""),
                    config_hash=hashes[k], seed=sampling.seed,
                    meta={"n_tokens": len(o), "stopped": bool(o and o[-1] in tok.stop_ids), "label": labels[k],
                          **({"ablation": ablation_name or "yes"} if ablation is not None else {})}))
            if is_writer():
                try:
                    append_answers(out, records)
                except OSError as e:  # this batch's answers are saved elsewhere; earlier ones are in out
                    raise write_failure(out, e, [r.to_json() for r in records], "answer") from None
            bar.update(len(chunk))
        bar.close()
    return len(jobs)
