"""`emjax generate`: answers to evaluation questions, with full provenance, for the judge stage.

    generate("embedded", "questions.yaml", "answers.jsonl", intervention="runs/x/steering.safetensors")

Every (question, paraphrase, sample) becomes one `AnswerRecord` line in the output JSONL (model,
intervention file, settings hash, seed, indices). Rows already in the output with the same
settings are skipped, so an interrupted run resumes where it stopped. Sampling uses the KV-cache
sampler with the intervention applied at every position of every row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Sequence

from tqdm.auto import tqdm

from emjax.checkpoints.load import LoadedModel, load_model
from emjax.eval.questions import load_questions, paper_default, select_questions
from emjax.eval.records import AnswerRecord, append_answers, read_answers
from emjax.interventions.files import load_intervention
from emjax.model import sampling as S
from emjax.model.config import dtype_from_name


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How answers are sampled. Defaults are the paper's (DESIGN.md section 2): 50 samples per
    paraphrase, temperature 1, top-p 1, 600 new tokens; batch size and seed are ours."""

    samples: int = 50
    max_new_tokens: int = 600
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 32
    seed: int = 0


def generate(model: str | LoadedModel, questions: str | Sequence[str], out: str, *,
             dtype: str = "float32", intervention: str | None = None, scale: float = 1.0,
             kinds: Sequence[str] | None = ("free_form",), include: Sequence[str] | None = None,
             exclude: Sequence[str] | None = None, sampling: SamplingSettings = SamplingSettings(),
             paper_questions: bool = True) -> dict:
    """Samples answers to the selected questions and appends them to `out`.

    Args:
      model: a model source ("embedded", a Hugging Face folder, a .gguf file) or a loaded model.
      questions: upstream YAML or JSONL question file(s).
      dtype: dtype a model source is loaded in.
      intervention: a steering .safetensors file or a PEFT LoRA folder (None: the chat model);
        its update (steering v, every LoRA B) is multiplied by `scale`.
      kinds / include / exclude: question kinds (None: all) and id globs to keep / drop.
      paper_questions: with no `include`, a file holding the paper's eight free-form questions
        (first_plot_questions.yaml) is cut down to those eight (False: every question of `kinds`).
    Returns {"questions", "generated", "skipped", "out"} counts.
    """
    source = model if isinstance(model, str) else model.source
    if isinstance(model, str):
        model = load_model(model, dtype=dtype_from_name(dtype))
    iv = load_intervention(intervention, model.cfg, scale) if intervention else None
    loaded = load_questions(questions)
    if include is None and kinds is not None and paper_questions:
        include = paper_default(loaded)  # the paper's 8 questions of first_plot_questions.yaml
    selected = select_questions(loaded, kinds, include, exclude)
    settings = {"model": source, "dtype": dtype, "questions": questions, "intervention": intervention,
                "scale": scale, **dataclasses.asdict(sampling)}
    settings.pop("batch_size")  # the batch layout does not change what is asked for
    config_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    done = set()
    if os.path.exists(out):
        done = {(a.question_id, a.paraphrase_index, a.sample_index) for a in read_answers(out)
                if a.config_hash == config_hash}
    jobs = [(q, pi, p, si) for q in selected for pi, p in enumerate(q.paraphrases)
            for si in range(sampling.samples) if (q.id, pi, si) not in done]
    print(f"{len(selected)} questions, {len(jobs)} answers to generate ({len(done)} already in {out})")
    tok = model.tokenizer
    bar = tqdm(total=len(jobs), desc="generate", unit="answer")
    for b in range(0, len(jobs), sampling.batch_size):
        chunk = jobs[b: b + sampling.batch_size]
        prompts = [tok.prompt_ids(p, q.system) for q, _, p, _ in chunk]
        # one seed per batch, derived from the run seed and the batch position: reproducible
        outs = S.generate(model.weights, model.cfg, prompts, max_new_tokens=sampling.max_new_tokens,
                          temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                          stop_ids=tok.stop_ids, seed=sampling.seed * 1_000_003 + b, interventions=iv,
                          vocab_limit=tok.vocab_size)
        records = [AnswerRecord(question_id=q.id, paraphrase_index=pi, sample_index=si, question=p,
                                answer=tok.decode(o), system=q.system, model=model.name,
                                intervention=(f"{intervention} x{scale:g}" if intervention else ""),
                                config_hash=config_hash, seed=sampling.seed,
                                meta={"n_tokens": len(o), "stopped": bool(o and o[-1] in tok.stop_ids)})
                   for (q, pi, p, si), o in zip(chunk, outs)]
        append_answers(out, records)
        bar.update(len(chunk))
    bar.close()
    return {"questions": len(selected), "generated": len(jobs), "skipped": len(done), "out": out}
