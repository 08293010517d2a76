"""Evaluation: questions, generated answers, the LLM judge and the report of EM / narrow rates.

Modules:
  questions     question files (upstream YAML, JSONL): loading, validation, selection
  records       answers as JSONL records; crash-tolerant JSONL primitives
  generate      `emjax generate`: answers with provenance (needs JAX)
  chat          `emjax chat`: greedy answers with top-token probabilities (needs JAX)
  judge/        `emjax judge`: the async, resumable LLM-judge stage
  report        `emjax report`: rates, bootstrap intervals, summary; report_plots: its plots

Only `generate` and `chat` import JAX: questions, records, judge and report run on machines
without accelerators.
"""
