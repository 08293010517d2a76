"""`emjax directions`: directions in the residual stream (argument parsing for emjax.directions.run).

    emjax directions mean-diff --a answers.jsonl --a-where "aligned<30,coherent>50"
        --b answers.jsonl --b-where "aligned>70,coherent>50" --judgements judged.jsonl
        --questions first_plot_questions.yaml --out runs/directions      (one command line)
    emjax directions compare "general=G.safetensors,narrow=N.safetensors,md=D.safetensors:mean_diff,random=random:0"
        --out runs/cos
    emjax directions gradient "general=G.safetensors,narrow=N.safetensors" --norms 0.5x,1x,2x --out runs/grad
    emjax directions drift runs/kl_removal [--references general=G.safetensors,narrow=N.safetensors]

Ablation at inference is an option of the other stages: `emjax generate --ablate SOURCE[@LAYERS]`
and the sweep config key `ablation`.
"""

from __future__ import annotations

import argparse
import json

from emjax.arg_types import OneLineParser, int_at_least, nonnegative_int, positive_int, seed

from emjax.data.tokenize import LOSS_TOKENS
from emjax.directions import run as R
from emjax.directions.sources import DirectionError


def _model_args(p) -> None:
    p.add_argument("--model", default="embedded", help="'embedded', a Hugging Face folder or a .gguf file")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights' dtype (auto: bfloat16 on GPU/TPU, float32 on CPU)")


def _set_args(p, side: str, help_text: str) -> None:
    p.add_argument(f"--{side}", action="append", default=[], metavar="JSONL", help=help_text)
    p.add_argument(f"--{side}-chats", action="append", default=[], metavar="JSONL",
                   help="chat JSONL rows ({messages: [...]}, or sample:NAME) taken whole into the set (repeatable)")
    p.add_argument(f"--{side}-label", default=None, help="only answers of this intervention (meta label or path)")
    p.add_argument(f"--{side}-where", default=None, metavar="CONDS",
                   help="only answers whose judge scores meet e.g. 'aligned<30,coherent>50'")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="emjax directions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("mean-diff", help="per-layer mean difference of two answer sets' activations")
    _model_args(p)
    _set_args(p, "a", "answers of set a (repeatable), e.g. misaligned ones")
    _set_args(p, "b", "answers of set b (repeatable), e.g. aligned ones")
    p.add_argument("--judgements", action="append", default=[], metavar="JSONL", help="judge results for --*-where")
    p.add_argument("--questions", action="append", default=[], metavar="FILE", help="question files of the answers")
    p.add_argument("--judge-prompts", action="append", default=[], metavar="FILE")
    p.add_argument("--judge-model", default=None)
    p.add_argument("--intervention", default=None, help="steering file / LoRA folder active while collecting")
    p.add_argument("--name", default="mean_diff", help="the direction's name in directions.safetensors")
    p.add_argument("--max-len", type=int_at_least(2), default=512)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--balance-seed", type=seed, default=0, help="seed cutting both sets to the smaller size")
    p.add_argument("--no-balance", action="store_true", help="keep every selected answer of both sets")
    p.add_argument("--data-dir", default=None, help="where file names of --*-chats resolve (default $EMJAX_DATA, "
                   "else the folder `emjax data get em` fills)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("compare", help="cosine table and heat map of named directions, per layer")
    _model_args(p)
    p.add_argument("spec", help="label=SOURCE,...: steering files, LoRA folders, FILE.safetensors:NAME, random:SEED")
    p.add_argument("--layer", type=nonnegative_int, default=None, help="layer of the matrix (default: shared by most)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("gradient", help="SFT-loss gradient projected on directions at equal norms")
    _model_args(p)
    p.add_argument("spec", help="label=SOURCE,... directions at the steered layer (e.g. general and narrow)")
    p.add_argument("--data", default="sample:bad_medical", help="training rows (a file or sample:NAME)")
    p.add_argument("--data-dir", default=None, help="where --data resolves (default as mean-diff's)")
    p.add_argument("--rows", type=positive_int, default=64)
    p.add_argument("--seed", type=seed, default=42)
    p.add_argument("--max-len", type=int_at_least(2), default=256)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--layer", type=nonnegative_int, default=None)
    p.add_argument("--hook", default="mlp_out", choices=["mlp_out", "block_out"])
    p.add_argument("--norms", default="0.5x,1x,2x", help="norms of v: absolute, or Nx = N times the mean direction norm")
    p.add_argument("--loss-tokens", default="assistant", choices=list(LOSS_TOKENS),
                   help="tokens the SFT loss is taken on: the assistant turns or every token (as the sweeps' "
                        "data.loss_tokens)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("drift", help="plot a run's logged drift (cos_/proj_ with its references)")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="default: RUN_DIR/drift")
    p.add_argument("--references", default=None, help="label=path,...: also recompute from the run's snapshots")
    _model_args(p)
    return parser


def _answer_set(args, side: str) -> R.AnswerSet:
    if not getattr(args, side) and not getattr(args, f"{side}_chats"):
        raise DirectionError(f"set {side} is empty: give --{side} answers.jsonl and/or --{side}-chats FILE")
    return R.AnswerSet(answers=getattr(args, side), chats=getattr(args, f"{side}_chats"),
                       label=getattr(args, f"{side}_label"),
                       where=getattr(args, f"{side}_where"), judgements=args.judgements, questions=args.questions,
                       judge_prompts=args.judge_prompts, judge_model=args.judge_model)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    R.check_stage_inputs(args.stage, model=args.model if args.stage != "drift" or args.references else None,
                         out=args.out, spec=getattr(args, "spec", None), data=getattr(args, "data", None),
                         data_dir=getattr(args, "data_dir", None), run_dir=getattr(args, "run_dir", None),
                         files=[f for k in ("a", "b", "judgements", "questions", "judge_prompts")
                                for f in getattr(args, k, None) or []],
                         norms=getattr(args, "norms", None), layer=getattr(args, "layer", None),
                         where={f"--{s}-where": getattr(args, f"{s}_where", None) for s in "ab"},
                         judgements=getattr(args, "judgements", None) or ())
    if args.stage == "mean-diff":
        a, b = _answer_set(args, "a"), _answer_set(args, "b")  # before the model loads
        summary = R.mean_diff_stage(R.load(args.model, args.dtype), a, b,
                                    args.out, name=args.name, max_len=args.max_len, batch_size=args.batch_size,
                                    intervention=args.intervention,
                                    balance_seed=None if args.no_balance else args.balance_seed,
                                    data_dir=args.data_dir)
    elif args.stage == "compare":
        summary = R.compare_stage(R.load(args.model, args.dtype), args.spec, args.out, layer=args.layer)
    elif args.stage == "gradient":
        summary = R.gradient_stage(R.load(args.model, args.dtype), args.spec, args.out, data=args.data,
                                   data_dir=args.data_dir, n_rows=args.rows, seed=args.seed, max_len=args.max_len,
                                   batch_size=args.batch_size, layer=args.layer, norms=args.norms, hook=args.hook,
                                   loss_tokens=args.loss_tokens)
    else:
        model = R.load(args.model, args.dtype) if args.references else None
        summary = R.drift_stage(args.run_dir, args.out, references=args.references, model=model)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rows", "norm_per_layer")}, indent=1, default=str))
    return 0
