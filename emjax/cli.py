"""The `emjax` command: one subcommand per stage.

    emjax main                      # the whole default job on the embedded model, on CPU
    emjax chat --model PATH         # greedy answers + top-token probabilities
    emjax train --config=configs/X.py --config.train.lr=1e-4
    emjax sweep efficiency --config=configs/sweep_embedded.py
    emjax generate --questions Q.yaml --intervention V --out answers.jsonl
    emjax judge / emjax report      # the accelerator-free judge stage and the rates
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="greedy answers to a few prompts, with top-token probabilities")
    p.add_argument("--model", default="embedded", help="'embedded', a Hugging Face folder or a .gguf file")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable); default: three demo prompts")
    p.add_argument("--system", default=None, help="system prompt (default: the template's own)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(func=_run_chat)


def _run_chat(args) -> int:
    from emjax.chat_demo import DEFAULT_PROMPTS, chat, format_results
    from emjax.load import load_model
    model = load_model(args.model)
    print(f"model: {model.name} ({model.cfg.family}, {model.cfg.n_layers} layers, "
          f"{model.cfg.num_params() / 1e6:.0f}M parameters) from {model.source}")
    results = chat(model, args.prompt or DEFAULT_PROMPTS, max_new_tokens=args.max_new_tokens,
                   top_k=args.top_k, system=args.system)
    print(format_results(results))
    return 0


def _add_main(sub) -> None:
    p = sub.add_parser("main", help="the default job on the embedded model (CPU-friendly)")
    p.add_argument("--model", default="embedded")
    p.add_argument("--out", default="runs/main", help="output folder")
    p.add_argument("--quick", action="store_true", help="fewer steps and samples (a smoke run)")
    p.set_defaults(func=_run_main)


def _run_main(args) -> int:
    from emjax.main_job import run_main
    return run_main(args)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a steering vector or LoRA adapter (SFT + lambda * KL)",
                       description="emjax train --config=configs/X.py [--config.key=value ...]")
    p.add_argument("--config", required=True, help="a config file with get_config()")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from emjax.config_loader import load_config
    from emjax.train import Trainer
    config = load_config(args.config, args.config_overrides)
    summary = Trainer(config).run()
    print(json.dumps(summary, indent=1))
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="efficiency / stability / significance sweeps of trained interventions",
                       description="emjax sweep {efficiency,stability,significance} --config=configs/sweep_X.py")
    p.add_argument("kind", choices=["efficiency", "stability", "significance", "all"])
    p.add_argument("--config", required=True)
    p.set_defaults(func=_run_sweep)


def _run_sweep(args) -> int:
    from emjax.config_loader import load_config
    from emjax.load import load_model
    from emjax.sweep_run import KINDS, run_sweep
    from emjax.train import DTYPES
    c = load_config(args.config, args.config_overrides)
    model = load_model(c.model.source, dtype=DTYPES[c.model.dtype])
    for kind in (KINDS if args.kind == "all" else (args.kind,)):
        print(json.dumps(run_sweep(kind, c, model), indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emjax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_main(sub)
    _add_chat(sub)
    _add_train(sub)
    _add_sweep(sub)
    from emjax.generate_run import add_generate_parser
    add_generate_parser(sub)
    try:
        from emjax.judge.cli import add_judge_parser, add_report_parser
        add_judge_parser(sub)
        add_report_parser(sub)
    except ImportError:  # judge stage not installed in this build
        pass
    return parser


def main(argv: list[str] | None = None) -> int:
    from emjax.config_loader import split_cli_overrides
    argv, overrides = split_cli_overrides(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.config_overrides = overrides
    if os.environ.get("EMJAX_DISTRIBUTED") == "1":  # multi-host: SLURM / MPI / TPU pods
        import jax
        jax.distributed.initialize()
    t = time.time()
    rc = args.func(args)
    print(f"[emjax {args.command}] done in {time.time() - t:.1f} s", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
