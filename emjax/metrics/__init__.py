"""The paper's three metrics for trained interventions: efficiency, stability, significance.

Modules:
  sweeps   vmapped losses of many versions of an intervention in one compiled call
  tables   the three metrics as tidy tables
  plots    their plots
  runner   `emjax sweep`: tables, plots and summaries written to disk
"""
