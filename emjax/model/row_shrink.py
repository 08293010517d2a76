"""When a sampling batch goes on with fewer rows: rows that stopped leave the batch.

Rows decode in lock-step, so a batch runs until its longest answer stops, and a step costs the
same whether one row is still running or all are. Once at most half of a batch's rows are still
running, `emjax.model.sampling.sample` moves them to the front of the KV cache (in place, one
layer at a time: no second cache) and decodes on with a batch of the next smaller size: the
matmuls and cache reads of a step then follow the rows still running. The cache's memory stays
allocated. Sizes halve (rounded up to `multiple`), so a call compiles at most log2(B / min_rows)
more decode programs, each once per shape (and kept by the persistent cache).

Where it stops paying (ours, an estimate): a Qwen2.5-14B decode step reads its 29.5 GB of bf16
weights whatever the rows (about 6 ms at an H200's 4.8 TB/s) and adds about 0.04 ms of matmuls per
row (2 x 14.7 GFLOP at 798 TFLOP/s): below about 160 rows the weights dominate, so halving a batch
of fewer than SHRINK_MIN_ROWS x 2 rows saves a few milliseconds a step and costs a compile.
"""

from __future__ import annotations

SHRINK_MIN_ROWS = 64  # the smallest batch a shrink goes to (0: never shrink); see the docstring


def halved(rows: int, multiple: int) -> int:
    """Half of `rows`, rounded up to a multiple of `multiple`."""
    return -(-rows // (2 * multiple)) * multiple


def smaller_sizes(rows: int, multiple: int, min_rows: int) -> list[int]:
    """The batch sizes a batch of `rows` may shrink to, largest first (none when min_rows <= 0)."""
    out = []
    while min_rows > 0 and min_rows <= (half := halved(rows, multiple)) < rows:
        out.append(half)
        rows = half
    return out


def smallest_holding(sizes: list[int], running: int) -> int | None:
    """The smallest of `sizes` that holds `running` rows (None if none does)."""
    fits = [s for s in sizes if s >= running]
    return min(fits) if fits else None
