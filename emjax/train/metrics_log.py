"""Training metrics: one JSON line per step and per eval in metrics.jsonl, and TensorBoard scalars
when tensorboardX is installed."""

from __future__ import annotations

import json
import os


class MetricsWriter:
    """metrics.jsonl (always) and TensorBoard (when tensorboardX is installed); with
    `enabled=False` (the other processes of a multi-host run) it writes nothing.

    resume_step: the step the run (re)starts from. The lines of later steps, written by a session
    interrupted after its last checkpoint, are dropped (the resumed run writes them again), and all
    lines when it is 0 (the run starts over), so every step has one line.
    """

    def __init__(self, out_dir: str, enabled: bool = True, resume_step: int | None = None):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.enabled = enabled
        if not enabled:
            self.f = self.tb = None
            return
        if resume_step is not None and os.path.exists(self.path):
            self._keep_through(resume_step)
        self.f = open(self.path, "a")
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
        except ImportError:
            self.tb = None

    def _keep_through(self, step: int) -> None:
        with open(self.path) as f:
            lines = [l for l in f if l.strip()]
        kept = [l for l in lines if step > 0 and json.loads(l).get("step", 0) <= step]
        if len(kept) < len(lines):
            with open(self.path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(self.path + ".tmp", self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self.f.close()
        if self.tb is not None:
            self.tb.close()
