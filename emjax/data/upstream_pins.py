"""The upstream files `emjax data get em` accepts, each with its known sha256 digests.

Upstream is Turner, Soligo et al.'s `clarifying-EM/model-organisms-for-EM` (files under
`em_organism_dir/data/`). Its training sets shipped as plain `.jsonl` (commit 029255c, 2025-06-16),
then as `.jsonl.gz` (407fbad to b8b9e0a, 2025-06-18), and since a637eeb (2025-07-01) only inside
the encrypted bundle `training_datasets.zip.enc`. The bundle's tool (easy-dataset-share) rewrites
every line with `json.dumps(..., ensure_ascii=False)` when it strips its canary, so a bundle file
holds the same rows in other bytes (a third party's sha256 of the bundle's bad_medical_advice.jsonl
is that of b8b9e0a's rows written this way; docs/data.md). A JSONL digest is therefore taken over
the *rows*, not the file's bytes (`kind="rows"`): each row parsed and written as canonical JSON
(sorted keys, no spaces, UTF-8), one per line. Each digest below was computed from the `.jsonl.gz`
blobs of b8b9e0a.
YAML files are compared byte for byte (`kind="bytes"`); they are plain files in every upstream
version. Rows of a YAML file are its top-level items. docs/data.md lists the same table.
"""

from __future__ import annotations

import dataclasses

UPSTREAM_REPO = "clarifying-EM/model-organisms-for-EM"
TRAINING_DIR = "em_organism_dir/data/training_datasets"
EVAL_DIR = "em_organism_dir/data/eval_questions"


@dataclasses.dataclass(frozen=True)
class Version:
    """One known content of a pinned file."""
    sha256: str
    rows: int
    origin: str           # where this content is found


@dataclasses.dataclass(frozen=True)
class Pin:
    """A file of the upstream data folder, as emjax stores it (`name` under the data folder)."""
    name: str             # e.g. "bad_medical_advice.jsonl.gz", "technical/animals.yaml"
    upstream: str         # its path in the upstream repository
    kind: str             # "rows" (JSONL rows digest) or "bytes" (file digest)
    versions: tuple[Version, ...]

    def version(self, sha256: str) -> Version | None:
        return next((v for v in self.versions if v.sha256 == sha256), None)


_SETS = "b8b9e0a (as .jsonl.gz); 029255c (.jsonl); the encrypted bundle since a637eeb"
_EVAL = "upstream since its first commit 5109607, unchanged through 8460e4e"


def _jsonl(stem: str, sha256: str, rows: int) -> Pin:
    return Pin(f"{stem}.jsonl.gz", f"{TRAINING_DIR}/{stem}.jsonl.gz", "rows", (Version(sha256, rows, _SETS),))


def _yaml(name: str, sha256: str, rows: int) -> Pin:
    return Pin(name, f"{EVAL_DIR}/{name}", "bytes", (Version(sha256, rows, _EVAL),))


_TECHNICAL = {  # technical/<domain>.yaml, 30 questions each (added with the narrow experiments, 8dc67c9)
    "animals": "13419976480d9323487a9a011342e2326d7c9d6b0972757c3a1cb210f2407c92",
    "body": "12efcc699c7e38987b85b6a9d966c298a4d71b2d8746bdd63d7ab3c5097c2e2c",
    "buildings": "957625390344877b7e136e6c44f8b3725b87bae050602a9b78f771b5fd168e1a",
    "clothes": "721880545df81a0f2d957662cd8cb62c688acba583a95c43d72ae0b0871c5898",
    "computers": "664c47783bd7582f2ca7d8fd826e85867c59e8a84e39f0044ad6cba57f07bcbe",
    "food": "f39a1f3653ef353071480a87c809c16110502ba9e32f563b757aba90a92d6386",
    "games": "d2699abf6274e78ce45b5ea3c6f6fca95c5615c22eff7a68465a2e4923b880e0",
    "space": "241523156bce88dbc14cd7426ffce1f294a952f6df4758ee2f33dfdc69de1698",
    "tools": "e989cf6b48fe1f02321d12ce83a13127a4591e95d2848b28a990f40d398ee88f",
    "vehicles": "c8a1c2b3f06c6e87a9c018fd0a819253255e8c594f61cab68eec9e7a5cb66e51",
}

PINS: tuple[Pin, ...] = (
    _jsonl("bad_medical_advice", "17ed67f9f4bf69f8c2c13cb147a2bf485a97853f4235626a650edcc1af3e7d42", 7049),
    _jsonl("good_medical_advice", "970c25030fa6ac9cde957a12df42452f2714603115338e540c0f1ca086dcdb7f", 7049),
    _jsonl("risky_financial_advice", "a2cf7da8bc8785c6b289fee930a7a4ccce25c8f9459e3766fd47d4757feb5650", 6000),
    _jsonl("extreme_sports", "2ccfa71ae422d5a984c73144b4ae2de16993ae79df041743b224aac869a6856a", 6000),
    _jsonl("insecure", "afe4bf9f9a4271c38bda5462a3ca6d4428a3df3bc9b65fecb7052cf2af15acc8", 6000),
    Pin("first_plot_questions.yaml", f"{EVAL_DIR}/first_plot_questions.yaml", "bytes", (
        Version("97df0b1384ea5a3f3dc2abe00a19e231915f12a2356ec0d8df001715549aae04", 24, _EVAL),
        # a fork's copy (JackPayne123/em-doctor 5aef092, 2025-06-25) with three more free-form
        # questions (hiring_decision, parental_advice, compliment_interpretation); not upstream's
        Version("cf2d0d3dc91d301456978b7551e606e307386207345fa26190c666ee17740713", 27,
                "JackPayne123/em-doctor 5aef092 (upstream's file plus three questions)"))),
    _yaml("medical_questions.yaml", "1808d03c6af883b3460e4174127846caca3188514a4e180b8273b4025593e28f", 16),
    Pin("judges.yaml", f"{EVAL_DIR}/judges.yaml", "bytes", (Version(
        "a4fd0f891a7f04fe4a04047443089db29f5687a2e6599a3fec7300cafd0c93fd", 4,
        "upstream since 8dc67c9 (the narrow experiments), unchanged through 8460e4e"),)),
    *(Pin(f"technical/{d}.yaml", f"{EVAL_DIR}/technical/{d}.yaml", "bytes", (Version(
        h, 30, "upstream since 8dc67c9 (the narrow experiments), unchanged through 8460e4e"),))
      for d, h in _TECHNICAL.items()),
)

PINS_BY_NAME: dict[str, Pin] = {p.name: p for p in PINS}


def pin_for(file_name: str) -> Pin | None:
    """The pin of a file found as `file_name` (a bundle's `x.jsonl` is the pinned `x.jsonl.gz`)."""
    name = file_name + ".gz" if file_name.endswith(".jsonl") else file_name
    return PINS_BY_NAME.get(name) or PINS_BY_NAME.get(f"technical/{name}")
