"""Training metrics: one JSON line per step and per eval in metrics.jsonl, and TensorBoard scalars
when tensorboardX is installed."""

from __future__ import annotations

import json
import os


class MetricsWriter:
    """metrics.jsonl (always) and TensorBoard (when tensorboardX is installed); with
    `enabled=False` (the other processes of a multi-host run) it writes nothing."""

    def __init__(self, out_dir: str, enabled: bool = True):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.enabled = enabled
        if not enabled:
            self.f = self.tb = None
            return
        self.f = open(self.path, "a")
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
        except ImportError:
            self.tb = None

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
