"""Held-out check: does an evaluation question repeat, or nearly repeat, a training prompt?

The narrow-misalignment evaluation asks *held-out* questions from the training domain. This module
measures how close each question of a bank comes to the user turns of the training sets:

    index = TrainingIndex.from_files(["bad_medical_advice.jsonl.gz", ...])
    report = check_questions(load_questions("medical_bank.yaml"), index)
    print(report.summary()); report.near_duplicates  # [] when the bank is held out

Three scores per (question, training prompt), all on normalised text (`normalise`: lower case,
curly quotes folded, apostrophes dropped, other punctuation to spaces, whitespace collapsed):

* `exact`: the normalised texts are equal.
* `containment`: the share of the question's word n-grams (n = `NGRAM`) found in that one
  training prompt. It catches a question copied from, or into, a longer training prompt.
* `reverse_containment`: the share of the training prompt's n-grams found in the question (a short
  training prompt pasted into a longer question). Only counted for prompts with at least
  `MIN_REVERSE_NGRAMS` n-grams: a very short prompt such as "What should I know about X?" shares
  most of its few n-grams with any question that uses the same stock phrase.
* `char_ratio`: `difflib.SequenceMatcher(...).ratio()`, a character-level similarity that catches
  light edits (typos, swapped words, changed punctuation) which break many n-grams.

A question is a near duplicate when any score, against any training prompt, reaches its threshold.
The choices are ours, calibrated on the upstream training sets (numbers from
`calibration_stats`, 150 held-back prompts per set, seed 1, measured 2026-12-01; rerun with
`python -m emjax.eval.heldout --calibrate --train FILE ...`):

* `NGRAM = 3`: the questions are short (10 to 60 words); the 8- to 13-gram windows of
  pre-training contamination checks would never match a lightly reworded question, while one
  replaced word removes at most three 3-grams.
* `CONTAINMENT_THRESHOLD = 0.5`, `CHAR_THRESHOLD = 0.8`: replacing 1 or 2 random words of a
  training prompt is always caught (at worst containment 0.33 with char ratio 0.83), 3 words 99%
  of the time, 4 words 93%, 6 words 57%. bad_medical_advice, whose prompts were written
  independently, never reaches them between two of its own prompts (maxima 0.35 containment,
  0.66 char ratio; p90 0.20 and 0.58). risky_financial_advice and extreme_sports were generated
  from a few templates ("I'm thinking about trying X for the first time. Any tips?"): 44% and 57%
  of their prompts are near duplicates of another of their prompts by these thresholds, which is
  the reuse a held-out question must avoid.
* `REVERSE_THRESHOLD = 0.7`, `MIN_REVERSE_NGRAMS = 8`: a short prompt shares half of its
  3-grams with an unrelated long question through stock phrases alone ("How should I prepare
  for my first freedive? I've heard it can be dangerous." against a medical prompt: 0.50, the
  maximum seen between bad_medical_advice prompts); a training prompt pasted into a question with
  a word or two changed stays above 0.7. Prompts under 10 words (fewer than 8 3-grams) are not
  scored in this direction.

Comparing every question with every training prompt through difflib would be slow (19k unique
prompts x 45 questions is 850k ratios of a few ms each). `TrainingIndex` keeps inverted indices
from n-grams and from words to prompts: both containments are exact over all prompts; difflib runs
only on a candidate pool (the `CANDIDATES` prompts sharing the most n-grams, those with the highest
reverse containment, and those sharing the most idf-weighted words), pruned by difflib's
`quick_ratio` upper bound. `char_ratio` is `SequenceMatcher(None, prompt, question).ratio()`.

This module imports no JAX: the eval stage runs on machines without accelerators.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from emjax.errors import EmjaxError
from emjax.eval.domains import DOMAINS, DomainError, all_training_files, get_domain

if TYPE_CHECKING:
    from emjax.eval.questions import Question

# Choices (ours); see the module docstring for where each value comes from.
NGRAM = 3
CONTAINMENT_THRESHOLD = 0.5
REVERSE_THRESHOLD = 0.7
CHAR_THRESHOLD = 0.8
MIN_REVERSE_NGRAMS = 8
CANDIDATES = 20
# Words in more than this share of prompts ("i", "the", "my") are not walked in the word index:
# they would touch every prompt and carry almost no idf weight for ranking difflib candidates.
_COMMON_WORD_SHARE = 0.2

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
_NON_WORD = re.compile(r"[^\w]+")


class HeldOutError(EmjaxError, ValueError):
    """Inputs the held-out check cannot use (no training prompts, a question without text)."""


def normalise(text: str) -> str:
    """Lower case, apostrophes dropped ("I'm" -> "im"), other punctuation to spaces, single spaces."""
    text = _APOSTROPHES.sub("", text.lower())
    return " ".join(_NON_WORD.sub(" ", text).split())


def word_ngrams(words: Sequence[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    """The set of word n-grams; a text shorter than n words gives its whole word tuple."""
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclasses.dataclass(frozen=True)
class Match:
    """How close one question comes to the training prompts.

    `prompt` is the closest training prompt (a near duplicate if there is one, else the prompt
    with the highest pair `score`); `exact`, `containment`, `reverse_containment` and
    `char_ratio` are the scores of that pair. The `max_*` fields are each score's maximum over all
    training prompts (they may come from different prompts); `near_duplicate` is decided on them.
    """

    question_id: str
    question: str
    prompt: str
    prompt_source: str
    exact: bool
    containment: float
    reverse_containment: float
    char_ratio: float
    max_containment: float
    max_reverse_containment: float
    max_char_ratio: float
    near_duplicate: bool

    @property
    def score(self) -> float:
        """The closest pair's largest score (1.0 for an exact duplicate)."""
        return 1.0 if self.exact else max(self.containment, self.reverse_containment, self.char_ratio)

    @property
    def max_score(self) -> float:
        """The largest score over all training prompts (1.0 for an exact duplicate)."""
        if self.exact:
            return 1.0
        return max(self.max_containment, self.max_reverse_containment, self.max_char_ratio)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """When a (question, prompt) pair counts as a near duplicate; defaults from the module."""

    containment: float = CONTAINMENT_THRESHOLD
    reverse: float = REVERSE_THRESHOLD
    char_ratio: float = CHAR_THRESHOLD
    min_reverse_ngrams: int = MIN_REVERSE_NGRAMS

    def near(self, exact: bool, containment: float, reverse: float, char_ratio: float) -> bool:
        return (exact or containment >= self.containment or reverse >= self.reverse
                or char_ratio >= self.char_ratio)


class TrainingIndex:
    """Training prompts with inverted n-gram and word indices for fast nearest-prompt queries.

    Identical normalised prompts are stored once (good_medical_advice repeats the user turns of
    bad_medical_advice); `sources[i]` lists every "file:row N" a prompt came from.
    """

    def __init__(self, prompts: Iterable[tuple[str, str]], n: int = NGRAM):
        """prompts: (text, source) pairs, e.g. ("How do I ...?", "extreme_sports.jsonl.gz:row 12")."""
        self.n = n
        self.texts: list[str] = []
        self.norms: list[str] = []
        self.sources: list[list[str]] = []
        self.ngram_counts: list[int] = []
        self._by_norm: dict[str, int] = {}
        self._ngrams: dict[tuple[str, ...], list[int]] = defaultdict(list)
        self._words: dict[str, list[int]] = defaultdict(list)
        for text, source in prompts:
            self._add(text, source)
        if not self.texts:
            raise HeldOutError("no training prompts to compare against")
        self._idf = {w: math.log(len(self.texts) / len(ids)) for w, ids in self._words.items()}

    def _add(self, text: str, source: str) -> None:
        norm = normalise(text)
        if not norm:
            return
        i = self._by_norm.get(norm)
        if i is not None:
            self.sources[i].append(source)
            return
        i = len(self.texts)
        self._by_norm[norm] = i
        self.texts.append(text)
        self.norms.append(norm)
        self.sources.append([source])
        words = norm.split()
        grams = word_ngrams(words, self.n)
        self.ngram_counts.append(len(grams))
        for g in grams:
            self._ngrams[g].append(i)
        for w in set(words):
            self._words[w].append(i)

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike[str]], n: int = NGRAM) -> "TrainingIndex":
        """The user turns of chat JSONL files (plain or gzip), via emjax.data.read_chat_jsonl."""
        return cls(iter_user_turns(paths), n=n)

    def __len__(self) -> int:
        return len(self.texts)

    def exact(self, text: str) -> int | None:
        """Index of the prompt equal to `text` after normalisation, else None."""
        return self._by_norm.get(normalise(text))

    def shared_ngrams(self, grams: set[tuple[str, ...]]) -> Counter[int]:
        """prompt index -> number of the given n-grams it contains."""
        shared: Counter[int] = Counter()
        for g in grams:
            shared.update(self._ngrams.get(g, ()))
        return shared

    def word_candidates(self, words: set[str], k: int) -> list[int]:
        """The k prompts with the highest idf-weighted count of shared (not too common) words."""
        limit = _COMMON_WORD_SHARE * len(self.texts)
        weight: Counter[int] = Counter()
        for w in words:
            ids = self._words.get(w)
            if ids and len(ids) <= limit:
                idf = self._idf[w]
                for i in ids:
                    weight[i] += idf
        return [i for i, _ in weight.most_common(k)]

    def _reverse_candidates(self, shared: Counter[int], min_ngrams: int, k: int) -> list[int]:
        """The k prompts (of at least `min_ngrams` n-grams) with the highest reverse containment."""
        scored = [(c / self.ngram_counts[i], i) for i, c in shared.items()
                  if self.ngram_counts[i] >= min_ngrams]
        scored.sort(reverse=True)
        return [i for _, i in scored[:k]]

    def closest(self, text: str, question_id: str = "", thresholds: Thresholds | None = None,
                candidates: int = CANDIDATES) -> Match:
        """The training prompt closest to `text`, its scores and the near-duplicate verdict.

        The n-gram scores are exact over every prompt (through the index). The character ratio is
        the exact maximum over the candidate pool (the `candidates` prompts sharing the most
        n-grams, those with the highest reverse containment and those sharing the most
        idf-weighted words); difflib's `quick_ratio` upper bound skips candidates that cannot beat
        the best ratio so far. The reported prompt is the nearest one that is a near duplicate if
        any is, else the one with the highest `score`.
        """
        th = thresholds or Thresholds()
        norm = normalise(text)
        if not norm:
            raise HeldOutError(f"question {question_id!r}: no words to compare")
        words = norm.split()
        grams = word_ngrams(words, self.n)
        shared = self.shared_ngrams(grams)
        pool = {i for i, _ in shared.most_common(candidates)}  # the best containment is among them
        reverse = self._reverse_candidates(shared, th.min_reverse_ngrams, candidates)
        pool.update(reverse)
        pool.update(self.word_candidates(set(words), candidates))
        exact = self._by_norm.get(norm)
        if exact is not None:
            pool.add(exact)
        if not pool:  # nothing shares a word: score against the first prompt for a report row
            pool = {0}
        ratios = self._char_ratios(norm, pool)
        i_char = max(ratios, key=ratios.get)
        i_cont = shared.most_common(1)[0][0] if shared else i_char
        i_rev = reverse[0] if reverse else i_char
        best = {"max_containment": shared.get(i_cont, 0) / len(grams),
                "max_reverse_containment": self._reverse(shared.get(i_rev, 0), i_rev, th),
                "max_char_ratio": ratios[i_char]}
        near = th.near(exact is not None, best["max_containment"], best["max_reverse_containment"],
                       best["max_char_ratio"])
        finalists = {i_char, i_cont, i_rev} | ({exact} if exact is not None else set())
        matches = [self._pair(question_id, text, norm, grams, i, shared.get(i, 0), th,
                              ratios.get(i), best, near) for i in sorted(finalists)]
        return max(matches, key=lambda m: (m.exact, th.near(m.exact, m.containment,
                                                           m.reverse_containment, m.char_ratio),
                                           m.score))

    def _reverse(self, n_shared: int, i: int, th: Thresholds) -> float:
        """Reverse containment of prompt i (0 for prompts shorter than th.min_reverse_ngrams)."""
        count = self.ngram_counts[i]
        return n_shared / count if count >= th.min_reverse_ngrams else 0.0

    def _char_ratios(self, norm: str, pool: Iterable[int]) -> dict[int, float]:
        """difflib ratios of `norm` against the pool, skipping those whose upper bound is lower
        than the best found (skipped prompts are absent from the result)."""
        sm = difflib.SequenceMatcher(None, autojunk=False)
        sm.set_seq2(norm)  # difflib caches the analysis of the second sequence
        bounds = []
        for i in pool:
            sm.set_seq1(self.norms[i])
            bounds.append((sm.quick_ratio(), i))
        bounds.sort(reverse=True)
        out: dict[int, float] = {}
        best = -1.0
        for bound, i in bounds:
            if bound <= best:
                break
            sm.set_seq1(self.norms[i])
            out[i] = sm.ratio()
            best = max(best, out[i])
        return out

    def _pair(self, qid: str, text: str, norm: str, grams: set, i: int, n_shared: int,
              th: Thresholds, ratio: float | None, best: dict[str, float], near: bool) -> Match:
        if ratio is None:
            ratio = self._char_ratios(norm, [i])[i]
        return Match(question_id=qid, question=text, prompt=self.texts[i],
                     prompt_source=self.sources[i][0], exact=norm == self.norms[i],
                     containment=n_shared / len(grams),
                     reverse_containment=self._reverse(n_shared, i, th), char_ratio=ratio,
                     near_duplicate=near, **best)


def iter_user_turns(paths: Iterable[str | os.PathLike[str]]) -> Iterable[tuple[str, str]]:
    """(content, "file:row N") of every user turn of the given chat JSONL files."""
    from emjax.data.conversations import read_chat_jsonl  # numpy-free, JAX-free

    for path in paths:
        name = os.path.basename(os.fspath(path))
        for row, conv in enumerate(read_chat_jsonl(path), 1):
            for m in conv:
                if m["role"] == "user":
                    yield m["content"], f"{name}:row {row}"


@dataclasses.dataclass(frozen=True)
class OverlapReport:
    """One Match per (question, paraphrase), in bank order, and the worst over the bank."""

    matches: list[Match]

    @property
    def worst(self) -> Match:
        """A near duplicate if there is one, else the question with the highest score."""
        return max(self.matches, key=lambda m: (m.near_duplicate, m.max_score))

    @property
    def near_duplicates(self) -> list[Match]:
        return [m for m in self.matches if m.near_duplicate]

    def summary(self) -> str:
        """Multi-line text: per-score maxima, the worst pair and every near duplicate."""
        if not self.matches:
            return "no questions"
        ms = self.matches
        w = self.worst
        lines = [
            f"{len(ms)} question texts; near duplicates: {len(self.near_duplicates)}",
            f"max containment {max(m.max_containment for m in ms):.3f}, "
            f"max reverse containment {max(m.max_reverse_containment for m in ms):.3f}, "
            f"max char ratio {max(m.max_char_ratio for m in ms):.3f}, "
            f"exact {sum(m.exact for m in ms)}",
            f"worst: {w.question_id} (score {w.max_score:.3f}; closest pair {w.score:.3f}) "
            f"~ {w.prompt_source}",
            f"  Q: {w.question}",
            f"  T: {w.prompt}",
        ]
        for m in self.near_duplicates:
            lines.append(f"NEAR DUPLICATE {m.question_id}: containment {m.max_containment:.2f}, "
                         f"reverse {m.max_reverse_containment:.2f}, char {m.max_char_ratio:.2f} ~ "
                         f"{m.prompt_source}: {m.prompt[:120]}")
        return "\n".join(lines)

    def rows(self) -> list[dict[str, object]]:
        """JSON-ready rows, one per question text."""
        return [dataclasses.asdict(m) | {"score": m.score, "max_score": m.max_score}
                for m in self.matches]


def check_texts(items: Iterable[tuple[str, str]], index: TrainingIndex,
                thresholds: Thresholds | None = None) -> OverlapReport:
    """(id, text) pairs against the index."""
    return OverlapReport([index.closest(text, qid, thresholds) for qid, text in items])


def check_questions(questions: Iterable[Question], index: TrainingIndex,
                    thresholds: Thresholds | None = None) -> OverlapReport:
    """Every paraphrase of every question against the index."""
    items = [(q.id, p) for q in questions for p in q.paraphrases]
    return check_texts(items, index, thresholds)


def calibration_stats(paths: Sequence[str | os.PathLike[str]], n_sample: int = 150, seed: int = 1,
                      edits: Sequence[int] = (1, 2, 3, 4, 6),
                      thresholds: Thresholds | None = None) -> dict[str, dict[str, float]]:
    """The numbers behind the thresholds (module docstring).

    For each file: `n_sample` of its prompts are held back, the rest of all files indexed, and
    each held-back prompt's maxima against the index summarised (p50, p90, max per score, share of
    near duplicates). Then `planted_K`: each held-back prompt with K random words replaced, checked
    against an index of the held-back prompts themselves (recall of planted near duplicates and
    the lowest containment and char ratio seen).
    """
    import random

    th = thresholds or Thresholds()
    turns = list(iter_user_turns(paths))
    rng = random.Random(seed)
    names = [os.path.basename(os.fspath(p)) for p in paths]
    held: dict[str, list[str]] = {}
    for name in names:
        texts = sorted({t for t, src in turns if src.startswith(name + ":")})
        held[name] = rng.sample(texts, min(n_sample, len(texts)))
    held_texts = {t for ts in held.values() for t in ts}
    rest = TrainingIndex([(t, s) for t, s in turns if t not in held_texts])
    out: dict[str, dict[str, float]] = {}
    for name, texts in held.items():
        ms = [rest.closest(t, name, th) for t in texts]
        row: dict[str, float] = {"near_share": sum(m.near_duplicate for m in ms) / len(ms)}
        for key in ("max_containment", "max_reverse_containment", "max_char_ratio"):
            vals = sorted(getattr(m, key) for m in ms)
            row |= {f"{key}_p50": vals[len(vals) // 2], f"{key}_p90": vals[int(0.9 * (len(vals) - 1))],
                    f"{key}_max": vals[-1]}
        out[name] = row
    planted = TrainingIndex([(t, "held") for t in sorted(held_texts)])
    fillers = ["really", "new", "big", "quite", "maybe", "some", "very", "my", "a", "the"]
    for k in edits:
        ms = []
        for t in sorted(held_texts):
            words = t.split()
            for i in rng.sample(range(len(words)), min(k, len(words))):
                words[i] = rng.choice(fillers)
            ms.append(planted.closest(" ".join(words), "planted", th))
        out[f"planted_{k}"] = {"recall": sum(m.near_duplicate for m in ms) / len(ms),
                               "min_containment": min(m.max_containment for m in ms),
                               "min_char_ratio": min(m.max_char_ratio for m in ms)}
    return out


def training_index(data_dir: str | os.PathLike[str]) -> TrainingIndex:
    """A TrainingIndex of every domain's training files (emjax.eval.domains) under `data_dir`."""
    paths = [p for d in DOMAINS.values() for p in d.training_paths(data_dir)]
    if not paths:
        raise DomainError(f"{data_dir}: none of the training files {list(all_training_files())}")
    return TrainingIndex.from_files(paths)


def check_banks(data_dir: str | os.PathLike[str] | None = None, names: tuple[str, ...] | None = None,
                index: TrainingIndex | None = None) -> dict[str, OverlapReport]:
    """Held-out check of the shipped banks against every domain's training prompts under
    `data_dir` (the upstream sets, emjax.data.locations.data_dir()), or against a prebuilt `index`:
    {domain: OverlapReport}.

    Every bank is checked against all three domains' files, not only its own: a financial
    question that repeats a sports prompt is not held out either.
    """
    from emjax.eval.questions import load_questions

    if index is None:
        if data_dir is None:
            raise DomainError("check_banks needs data_dir or index")
        index = training_index(data_dir)
    return {n: check_questions(load_questions(get_domain(n).bank_path()), index)
            for n in (names or tuple(DOMAINS))}


class HeldoutInputError(EmjaxError, ValueError):
    """A bank, training file or folder of the held-out check that is not there."""


def _fraction(text: str) -> float:
    """A threshold in [0, 1] (argparse type)."""
    import argparse
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"{text!r} is not in [0, 1]")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Check question banks against training prompts; exit status 1 if any near duplicate.

    python -m emjax.eval.heldout --data-dir ~/.cache/emjax/data/em     # the shipped banks (emjax data get em)
    python -m emjax.eval.heldout BANK.yaml --train A.jsonl.gz B.jsonl.gz
    python -m emjax.eval.heldout --calibrate --train A.jsonl.gz ...      # calibration_stats
    """
    import argparse
    import json

    from emjax.eval.questions import load_questions

    from emjax.arg_types import OneLineParser

    ap = OneLineParser(prog="emjax heldout", description=main.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("banks", nargs="*", help="question files (upstream YAML or JSONL); default "
                    "with --data-dir: the three shipped banks")
    ap.add_argument("--train", nargs="+", default=[], help="training chat JSONL files (.gz ok)")
    ap.add_argument("--data-dir", help="folder with upstream's training sets: adds every domain's "
                    "training files found there (emjax.eval.domains)")
    ap.add_argument("--containment", type=_fraction, default=CONTAINMENT_THRESHOLD)
    ap.add_argument("--reverse", type=_fraction, default=REVERSE_THRESHOLD)
    ap.add_argument("--char-ratio", type=_fraction, default=CHAR_THRESHOLD)
    ap.add_argument("--json", help="write one row per question text to this JSONL file")
    ap.add_argument("--calibrate", action="store_true",
                    help="print calibration_stats for the training files instead")
    args = ap.parse_args(argv)
    train = [str(p) for p in args.train]
    banks = list(args.banks)
    if args.data_dir and not os.path.isdir(args.data_dir):
        raise HeldoutInputError(f"--data-dir {args.data_dir}: no such folder (upstream's training sets: "
                                "emjax data get em)")
    for f in [*train, *banks]:
        if not os.path.isfile(f):
            raise HeldoutInputError(f"{f}: no such file")
    if args.data_dir:
        train += [str(p) for d in DOMAINS.values() for p in d.training_paths(args.data_dir)]
        banks = banks or [str(d.bank_path()) for d in DOMAINS.values()]
    if args.json:  # never one of the inputs: it is rewritten
        from emjax.eval.checks import check_output_file
        check_output_file(args.json, {"--train": train, "a question file": banks}, "--json")
    if not train:
        ap.error("give --train files or --data-dir")
    if args.calibrate:
        for name, row in calibration_stats(train).items():
            print(name, " ".join(f"{k}={v:.3f}" for k, v in row.items()))
        return 0
    if not banks:
        ap.error("give question files (or --data-dir, or --calibrate)")
    index = TrainingIndex.from_files(train)
    th = Thresholds(containment=args.containment, reverse=args.reverse, char_ratio=args.char_ratio)
    bad = 0
    rows: list[dict[str, object]] = []
    for bank in banks:
        report = check_questions(load_questions(bank), index, th)
        print(f"== {bank} vs {len(index)} unique training prompts of {len(train)} file(s)")
        print(report.summary())
        bad += len(report.near_duplicates)
        rows += [{"bank": bank} | r for r in report.rows()]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
