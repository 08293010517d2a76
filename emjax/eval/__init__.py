"""Evaluation: questions, generated answers, the LLM judge and the report of EM / narrow rates.

Modules:
  questions     question files (upstream YAML, JSONL): loading, validation, selection
  records       answers as JSONL records; crash-tolerant JSONL primitives
  generate      `emjax generate`: answers with provenance (needs JAX)
  chat          `emjax chat`: greedy answers with top-token probabilities (needs JAX)
  judge/        `emjax judge`: the async, resumable LLM-judge stage
  local_judge/  `emjax judge --local`: a model in emjax as the judge, exact answer probabilities (needs JAX)
  judge_agreement  `emjax report --compare-judges`: two judges on the same answers
  report        `emjax report`: rates, bootstrap intervals, summary; report_plots: its plots

Only `generate`, `chat` and `local_judge` import JAX: questions, records, judge, report and
judge_agreement run on machines without accelerators.
"""
