"""emjax: emergent vs narrow misalignment experiments in JAX.

Packages, one per stage a researcher would name (imports point down this list, never up;
tests/test_layering.py checks it):

  emjax.timings        the stages' seconds by phase: load, data, cache, compile, compute
  emjax.model          config, the one weight schema, the pure-function decoder with its hook
                       point, attention kernels, KV-cache sampling, sharding
  emjax.data           chat JSONL, the chat tokenizer, tokenising, batching, the KL mix, FineWeb
  emjax.checkpoints    safetensors / GGUF / the embedded model -> `load_model(source)`
  emjax.interventions  LoRA and steering-vector pytrees, tree arithmetic, PEFT / steering files
  emjax.train          SFT + KL losses, the compiled step, the frozen cache, the loop
  emjax.eval           evaluation without accelerators (no JAX): questions, answer records, the
                       LLM judge, the report, metric names and thresholds
  emjax.inference      evaluation that runs a model: generation, chat, the local judge
  emjax.directions     directions in the residual stream: mean differences, cosine tables, the
                       gradient analysis, drift, ablation specs
  emjax.metrics        the three sweeps (efficiency, stability, significance) and their outputs
  emjax.jobs           whole-pipeline jobs: `emjax main` (the pipeline in miniature on the
                       embedded model), `emjax technical` (the technical-prose example)
  emjax.experiments    multi-stage experiments: data mixing at several fractions, KL removal
                       with behaviour (train, answer, judge, table and plot)
  emjax.cli            the `emjax` command: argument parsing only

Where to look first: a steering vector enters the residual stream in
`emjax/model/hooks.py` (`add_steering`); a weight's Hugging Face name is in
`emjax/model/schema.py`; the default learning rate is in `configs/default.py`.
"""

__version__ = "0.1.0"
