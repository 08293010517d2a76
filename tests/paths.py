"""Where tests find the repository's configs and the data in ../shared (tests skip cleanly where
shared data is absent; it is never copied into the project)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED_DATA = REPO.parent / "shared" / "data"
UPSTREAM_EM = SHARED_DATA / "em"
FINEWEB = SHARED_DATA / "fineweb" / "fineweb_sample.jsonl.gz"
