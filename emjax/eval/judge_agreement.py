"""Agreement of two judges on the same answers: `emjax report --compare-judges A.jsonl B.jsonl`.

Both results files are joined onto the same selected answers (`emjax.eval.report.judged_frame`),
each under its own judge model name (read from its lines, or given). Per metric, over the answers
both judges scored (a score, not None, from each): Pearson and Spearman (average ranks for ties)
correlation, mean absolute difference, and both means. Per rate of `emjax.eval.report.rate_masks`
(EM, EM among coherent, coherence, narrow), on the answers where both judges have every score the
rate needs: each judge's rate, the difference B - A with a paired percentile bootstrap interval
(the same answers resampled for both), and how many answers each judge alone flags. "Among
coherent" rates keep each judge's own coherence cut, as the report does.

This module needs no accelerator and must not import jax.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emjax.errors import EmjaxError
from emjax.eval.conventions import DEFAULT_METRICS, Thresholds
from emjax.eval.report import _json_safe, group_labels, judged_frame, rate_masks

# Rates whose common answers are those of another rate (a judge's own coherence cut applies on top).
_BASE_RATE = {"em_rate_among_coherent": "em_rate", "narrow_rate_among_coherent": "narrow_rate"}
_FLAGGING_RATES = ("em_rate", "narrow_rate")


class JudgeAgreementError(EmjaxError, ValueError):
    """Results files that cannot be compared (no lines, several judge models in one file)."""


def judge_model_of(path: str) -> str:
    """The one judge model named by the lines of a results file."""
    from emjax.eval.judge.store import ResultStore

    models = sorted({str(r.get("judge_model")) for r in ResultStore(path) if r.get("judge_model")})
    if len(models) != 1:
        what = "no judge model (no result lines)" if not models else f"several judge models {models}"
        raise JudgeAgreementError(f"{path}: {what}; name the two judges with --compare-models A,B")
    return models[0]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    import pandas as pd
    return pd.Series(x).rank(method="average").to_numpy(float)


def score_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Agreement of two score columns (NaN: no score) over the rows both scored."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    both = ~np.isnan(a) & ~np.isnan(b)
    x, y = a[both], b[both]
    n = int(both.sum())
    return {"n_both": n, "n_only_a": int((~np.isnan(a) & np.isnan(b)).sum()),
            "n_only_b": int((np.isnan(a) & ~np.isnan(b)).sum()),
            "pearson": _pearson(x, y), "spearman": _pearson(_ranks(x), _ranks(y)) if n else math.nan,
            "mean_abs_diff": float(np.mean(np.abs(x - y))) if n else math.nan,
            "mean_a": float(np.mean(x)) if n else math.nan, "mean_b": float(np.mean(y)) if n else math.nan}


def _paired_diff_ci(num_a, den_a, num_b, den_b, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of rate_b - rate_a, the same rows resampled for both judges."""
    n = len(num_a)
    if n == 0 or n_boot < 1:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    da, db = den_a[idx].sum(1), den_b[idx].sum(1)
    ok = (da > 0) & (db > 0)
    if not ok.any():
        return math.nan, math.nan
    diff = (num_b[idx].sum(1)[ok] / db[ok]) - (num_a[idx].sum(1)[ok] / da[ok])
    lo, hi = np.quantile(diff, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def rate_agreement(df_a: Any, df_b: Any, th: Thresholds, narrow_metric: str | None, n_boot: int = 1000,
                   seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per rate: both judges' rates on the answers where both have the rate's scores, B - A with
    a paired bootstrap interval, and the answers flagged by both / by one judge only."""
    ma, mb = rate_masks(df_a, th, narrow_metric), rate_masks(df_b, th, narrow_metric)
    out: dict[str, dict[str, Any]] = {}
    for name in ma:
        base_name = _BASE_RATE.get(name, name)
        base = ma[base_name][1] & mb[base_name][1]
        (na, da), (nb, db) = ma[name], mb[name]
        na, da, nb, db = (m[base] for m in (na & da, da, nb & db, db))
        ra = na.sum() / da.sum() if da.sum() else math.nan
        rb = nb.sum() / db.sum() if db.sum() else math.nan
        lo, hi = _paired_diff_ci(na, da, nb, db, n_boot, seed)
        entry = {"n_common": int(base.sum()), "rate_a": float(ra), "rate_b": float(rb), "diff_b_minus_a": float(rb - ra),
                 "diff_ci_low": lo, "diff_ci_high": hi, "denominator_a": int(da.sum()), "denominator_b": int(db.sum())}
        if name in _FLAGGING_RATES:
            entry.update(n_flagged_both=int((na & nb).sum()), n_flagged_only_a=int((na & ~nb).sum()),
                         n_flagged_only_b=int((~na & nb).sum()))
        out[name] = entry
    return out


def agreement(df_a: Any, df_b: Any, metrics: Sequence[str], th: Thresholds = Thresholds(),
              narrow_metric: str | None = None, group_by: Sequence[str] = ("model", "intervention"),
              n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Score agreement per metric and rate agreement overall and per group, for two tables of
    `judged_frame` over the same answers (same rows, same order)."""
    if len(df_a) != len(df_b):
        raise JudgeAgreementError(f"the two judges' tables have {len(df_a)} and {len(df_b)} rows")
    labels = np.asarray(group_labels(df_a, group_by), dtype=object)
    groups = [{"group": "all", "n_answers": len(df_a), "rates": rate_agreement(df_a, df_b, th, narrow_metric, n_boot, seed)}]
    if len(set(labels)) > 1:
        for label in dict.fromkeys(labels):
            sel = labels == label
            sub_a, sub_b = df_a[sel].reset_index(drop=True), df_b[sel].reset_index(drop=True)
            groups.append({"group": label, "n_answers": int(sel.sum()),
                           "rates": rate_agreement(sub_a, sub_b, th, narrow_metric, n_boot, seed)})
    return {"n_answers": len(df_a), "thresholds": th.describe(narrow_metric),
            "metrics": {m: score_agreement(df_a[m], df_b[m]) for m in metrics}, "groups": groups}


def compare_judges(sel: Any, path_a: str, path_b: str, out_dir: str | None = None, *, th: Thresholds = Thresholds(),
                   narrow_metric: str | None = None, judge_models: Sequence[str] | None = None,
                   domain_questions: Sequence[str] = (), group_by: Sequence[str] = ("model", "intervention"),
                   n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The agreement of the judges of two results files on the selected answers; writes
    judge_agreement.json (and .md, the printed table) to `out_dir` when given."""
    from emjax.eval.judge.store import ResultStore

    models = list(judge_models) if judge_models else [judge_model_of(path_a), judge_model_of(path_b)]
    if len(models) != 2:
        raise JudgeAgreementError(f"--compare-models takes two judge model names, got {models}")
    metrics = [*DEFAULT_METRICS] + ([narrow_metric] if narrow_metric else [])
    df_a, _ = judged_frame(sel, ResultStore(path_a), metrics, models[0], domain_questions)
    df_b, _ = judged_frame(sel, ResultStore(path_b), metrics, models[1], domain_questions)
    summary = {"judges": {"a": {"results": path_a, "judge_model": models[0]},
                          "b": {"results": path_b, "judge_model": models[1]}},
               "narrow_metric": narrow_metric,
               **agreement(df_a, df_b, metrics, th, narrow_metric, group_by, n_boot, seed)}
    summary = _json_safe(summary)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "judge_agreement.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, ensure_ascii=False)
        with open(os.path.join(out_dir, "judge_agreement.md"), "w", encoding="utf-8") as f:
            f.write(format_agreement(summary) + "\n")
    return summary


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def format_agreement(summary: Mapping[str, Any]) -> str:
    """The agreement as two markdown tables (scores per metric; rates per group)."""
    j = summary["judges"]
    lines = [f"A: {j['a']['judge_model']} ({j['a']['results']}); B: {j['b']['judge_model']} ({j['b']['results']}); "
             f"{summary['n_answers']} answers", "",
             "| metric | n both | Pearson | Spearman | mean abs diff | mean A | mean B |", "|---|---|---|---|---|---|---|"]
    for m, s in summary["metrics"].items():
        lines.append(f"| {m} | {s['n_both']} | {_f(s['pearson'])} | {_f(s['spearman'])} | "
                     f"{_f(s['mean_abs_diff'], '{:.2f}')} | {_f(s['mean_a'], '{:.2f}')} | {_f(s['mean_b'], '{:.2f}')} |")
    pct = "{:.1%}"
    lines += ["", f"EM: {summary['thresholds']['em']}; narrow: {summary['thresholds']['narrow'] or 'off'}", "",
              "| group | rate | n common | A | B | B - A [95% CI] | flagged both / A only / B only |",
              "|---|---|---|---|---|---|---|"]
    for g in summary["groups"]:
        for name, r in g["rates"].items():
            flags = (f"{r['n_flagged_both']} / {r['n_flagged_only_a']} / {r['n_flagged_only_b']}"
                     if "n_flagged_both" in r else "")
            lines.append(f"| {g['group']} | {name} | {r['n_common']} | {_f(r['rate_a'], pct)} | {_f(r['rate_b'], pct)} | "
                         f"{_f(r['diff_b_minus_a'], '{:+.1%}')} [{_f(r['diff_ci_low'], '{:+.1%}')}, "
                         f"{_f(r['diff_ci_high'], '{:+.1%}')}] | {flags} |")
    return "\n".join(lines)
