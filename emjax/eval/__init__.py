"""Evaluation without accelerators: questions, answer records, the LLM judge and the report.

Modules:
  conventions   metric names ("aligned", "coherent", the narrow metric) and the rate thresholds
  selection     `AnswerSelection`: which answers a stage reads; `load_selection`
  questions     question files (upstream YAML, JSONL): loading, validation, selection
  records       answers as JSONL records; crash-tolerant JSONL primitives
  judge/        `emjax judge`: the async, resumable LLM-judge stage
  judge_agreement  `emjax report --compare-judges`: two judges on the same answers
  report        `emjax report`: rates, bootstrap intervals, summary; report_plots: its plots
  domains       the three training domains and their held-out banks
  heldout       held-out checks of question banks against training prompts
  technical     the technical-prose example's style rates
  checks, output_lock, rescue   input checks, one writer per output, failure records

No module here imports JAX (tests/test_layering.py enforces it): the judge and the report run on
machines without accelerators. Generation, chat and the local judge, which run a model, are
emjax.inference.
"""
