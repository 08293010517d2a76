"""Whole-pipeline jobs: each runs every stage (model, data, training, metrics, answers, judge,
summary) into one output folder, resumable stage by stage.

  main           `emjax main`: the paper's pipeline in miniature on the embedded model
  technical      `emjax technical`: the paper's second (technical-prose) example
  main_summary   the summary.md of `emjax main` (no JAX: reads the summary dict only)
"""
