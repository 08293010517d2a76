"""Training an intervention with SFT + lambda * KL against the frozen chat model.

Modules (imports point down this list):
  losses         chunked cross-entropy and KL from final hidden states
  shared_prefix  the frozen pass below the intervention and the losses of the suffix above it
  step           the compiled optimiser step (gradient accumulation, skipped non-finite steps)
  frozen_store   the frozen cache on disk, one entry per model, layer and part, reused across runs
  frozen_cache   frozen activations of the rows a run draws, encoded once or read from disk
  checkpointing  Orbax checkpoints of the trainable state
  inputs         the data and the initial intervention a config describes; whether KL is on
  memory         the step's device memory, estimated before compiling, and what would make it fit
  metrics_log    metrics.jsonl and TensorBoard
  run_record     what an output_dir holds: a finished run, its config, the seconds of earlier sessions
  loop           the step/eval/checkpoint loop of one run and of N vmapped runs
  trainer        one run: `Trainer(config).run()`; `train(config)` answers a finished run unloaded
  replicates     one config under several seeds, one run after another
  vmapped        several steering-vector runs (seeds, lambdas, lrs) in one compiled step
  command        `emjax train`: one run, replicates or vmapped runs, as the command line asks
"""
