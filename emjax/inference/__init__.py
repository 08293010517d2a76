"""Evaluation that runs a model (needs JAX): answers, chat and the local judge.

Modules:
  generate      `emjax generate`: answers with provenance
  chat          `emjax chat`: greedy answers with top-token probabilities
  local_judge/  `emjax judge --local`: a model in emjax as the judge, exact answer probabilities

They read questions and write answers and judge results in emjax.eval's formats (emjax.eval needs
no JAX and never imports this package).
"""
