"""`summary.md` of the main job: the tables and plots a researcher would screenshot, each number
with what it means and the paper's expected ordering (seen or not, said plainly). Formatting
only: it reads the summary dict `emjax.jobs.main.run_main` builds."""

from __future__ import annotations

from typing import Any


def _f(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _pct(r: dict, name: str) -> str:
    v = r.get(name)
    if v is None:
        return "n/a"
    lo, hi = r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high")
    ci = "" if lo is None else f" [{100 * lo:.0f}, {100 * hi:.0f}]"
    return f"{100 * v:.1f}%{ci} (n={r.get(f'{name}_n')})"


def _seen(flag: bool) -> str:
    return "**seen**" if flag else "**not seen**"


def _not_run(s: dict) -> list[str]:
    """What the job could not run, why, and what enables it (nothing is skipped silently)."""
    missing = s.get("not_run") or []
    if not missing:
        judge = "the judge as a dry run (no `--judge-url`: see *Judge*)" if s.get("judge_note") else "the judge's rates"
        return [f"Everything ran: the three metrics and {judge}. Nothing was skipped.", ""]
    lines = ["## Not run", "", "| what | why | to run it |", "|---|---|---|"]
    lines += [f"| {m['what']} | {m['reason']} | {m['enable']} |" for m in missing]
    return lines + [""]


STAGE_TITLES = {"chat": "1 load + chat", "train": "2 train", "sweeps": "3 metrics", "generate": "4 answers",
                "judge": "5 judge"}


def _time(s: dict) -> list[str]:
    """Each stage's seconds by phase (emjax.timings), as measured when the stage ran."""
    phases = ("load", "data", "cache", "compile", "compute", "other", "total")
    lines = ["## Time", "", "| stage | " + " | ".join(phases) + " |", "|---" * (len(phases) + 1) + "|"]
    for name, st in s["stages"].items():
        t = st.get("timings") or {}
        lines.append(f"| {STAGE_TITLES.get(name, name)} | " + " | ".join(_f(t.get(k), ".1f") for k in phases) + " |")
    total = s.get("timings") or {}
    lines.append("| **all stages** | " + " | ".join(_f(total.get(k), ".1f") for k in phases) + " |")
    return lines + ["", "Seconds when each stage ran (a stage reused from an earlier run keeps its first time).", ""]


def _training(s: dict) -> list[str]:
    if "train" not in s["stages"]:
        return ["## Vectors", "", "Not trained (see *Not run* above).", ""]
    lines = ["## Vectors", "", "| vector | held-out in-domain loss | out-of-domain KL (nats/token) | ||alpha v|| |",
             "|---|---|---|---|"]
    for k, r in s["stages"]["train"]["runs"].items():
        lines.append(f"| {k} | {_f(r['final_eval']['eval_loss'])} | {_f(r['final_eval']['eval_kl_ood'], '.4f')} "
                     f"| {_f(r['intervention_norm'])} |")
    for seed, c in (s.get("general_vs_narrow") or {}).items():
        lines += ["", f"General vs narrow ({seed}): cosine {c['cosine']:.4f}, relative difference "
                      f"{c['relative_difference']:.2e}." + (f" **Note:** {c['note']}." if c.get("note") else "")]
    sp = s.get("spread_across_seeds")
    if sp:
        lines += ["", "Across seeds (mean ± std, n): " + "; ".join(
            f"{k}: loss {_f(v['eval_loss'].get('mean'))} ± {_f(v['eval_loss'].get('std'))}, "
            f"OOD KL {_f(v['eval_kl_ood'].get('mean'), '.4f')} ± {_f(v['eval_kl_ood'].get('std'), '.4f')} "
            f"(n={v['eval_loss'].get('n')})" for k, v in sp.items())]
    return lines + [""]


def _pairs(d: dict) -> tuple[list[float], list[float]]:
    """Values of the general and the narrow vectors (every seed) of a {label: value} dict."""
    g = [v for k, v in d.items() if k.startswith("general")]
    n = [v for k, v in d.items() if k.startswith("narrow")]
    return g, n


def _mean(x: list[float]) -> float | None:
    return sum(x) / len(x) if x else None


METRICS = ("efficiency", "stability", "significance")


def _metrics(s: dict) -> list[str]:
    sw = s["stages"].get("sweeps")
    if sw is None:
        return ["## The three metrics", "", "Not run (see *Not run* above).", ""]
    ran = [k for k in METRICS if k in sw]
    title = "The three metrics" if len(ran) == 3 else f"The metrics: {len(ran)} of the paper's three ran (see *Not run*)"
    lines = [f"## {title}", "", "| metric | general | narrow | the paper's ordering |", "|---|---|---|---|"]
    if "efficiency" in sw:
        for other, losses in sw["efficiency"]["equal_norm_loss"].items():
            g, n = _pairs(losses)
            if g and n:
                lines.append(f"| efficiency: training loss {other.replace('_', ' ')} | {_f(_mean(g))} | {_f(_mean(n))} "
                             f"| general lower: {_seen(_mean(g) < _mean(n))} |")
    if "stability" in sw:
        g, n = _pairs(sw["stability"]["mean_relative_increase"])
        if g and n:
            eps = sorted(float(e) for e in next(iter(sw["stability"].get("relative_increase", {}).values()), {}))
            # the mean runs over every eps, the largest too (at eps 1 the vector is replaced by noise):
            # said in the row, since a reader would take it for partial noise only
            over = f" over eps {', '.join(f'{e:g}' for e in eps)}" if eps else " over eps"
            lines.append(f"| stability: mean relative loss increase{over} (eps 1: the vector replaced by noise; "
                         f"per-eps values in sweeps/stability_summary.json) | {_f(_mean(g))} | {_f(_mean(n))} "
                         f"| general lower: {_seen(_mean(g) < _mean(n))} |")
    if "significance" in sw:
        g, n = _pairs(sw["significance"]["kl_at_max_norm"])
        rnd = sw["significance"].get("random_kl_at_max_norm") or {}
        if g and n:
            lines.append(f"| significance: KL(chat ‖ steered) on FineWeb at the largest norm | {_f(_mean(g))} | "
                         f"{_f(_mean(n))} | general larger: {_seen(_mean(g) > _mean(n))}; random "
                         f"{_f(rnd.get('min'))}-{_f(rnd.get('max'))} |")
    lines += ["", "Where several seeds ran, the columns are their means (each seed is in sweeps/*_summary.json).",
              "A few dozen rows on a 0.5B model: a check of the pipeline, not a replication.", ""]
    for kind in ("efficiency", "stability", "significance"):
        if kind in sw:
            lines.append(f"![{kind}](sweeps/{kind}.png)")
    return lines + [""]


def _rates(s: dict) -> list[str]:
    j = s["stages"].get("judge")
    if j is None:
        return ["## Judge", "", "Not run (see *Not run* above).", ""]
    if not j.get("rates"):
        plan = j.get("dry_run") or {}
        return ["## Judge", "", f"Dry run (no judge URL): {plan.get('n_pending', 'n/a')} "
                "requests would be sent. `emjax main --judge-url URL` scores them with any OpenAI-compatible "
                "server and fills the EM and narrow rates.", ""]
    th = j["thresholds"]
    lines = ["## Emergent and narrow misalignment", "",
             f"Judge `{j['judge']['model']}` at {j['judge']['url']}. EM: {th['em']} on the general questions; "
             f"narrow: {th['narrow']} on held-out medical questions; 95% bootstrap intervals.", "",
             "| intervention | EM rate | narrow rate | coherent |", "|---|---|---|---|"]
    for r in j["rates"]:
        name = r["group"] if r["group"] != "all" else "chat model (no intervention)"
        lines.append(f"| {name} | {_pct(r, 'em_rate')} | {_pct(r, 'narrow_rate')} | {_pct(r, 'coherence_rate')} |")
    lines += ["", "A 0.5B model's answers, a handful each: the rates show the pipeline works; they measure "
              "nothing about the paper's claim at this size.", "", "![EM vs narrow](report/em_vs_narrow.png)", ""]
    return lines


def summary_md(s: dict) -> str:
    """The markdown text of summary.md."""
    m = s["model"]
    lines = [f"# emjax main: {m['name']}", "",
             f"{m['family']}, {m['layers']} layers, {m['params'] / 1e6:.0f}M parameters, from `{m['source']}`.", ""]
    lines += _not_run(s) + _training(s) + _metrics(s) + _rates(s) + _time(s)
    return "\n".join(lines)

