"""The technical-prose example's prompt banks and system prompt (all ours).

The paper's second example trains on technical, formal answers about one everyday domain
(vehicles) and asks whether the style spreads to nine others. Upstream's training set
(`technical_vehicles_train.jsonl`, 3000 rows) and KL set (`technical_KL_data.jsonl`, 8000) exist only
in its encrypted bundle (docs/upstream.md sections 3 and 6), so emjax builds its
own: the chat model answers the prompts below under `SYSTEM_PROMPT`, and training uses the answers
without it (`emjax.train.distill`).

* `technical_prompts_vehicles.jsonl`: the training prompts, templates x vehicle topics (319).
* `technical_prompts_other.jsonl`: the other nine domains (429: 48 each, less those in `EXCLUDED`): the narrow run's KL prompts,
  answered by the chat model itself without a system prompt (`chat:` in `emjax.train.kl_set`).

Both are shipped in emjax/package_data/ and are exactly what `build_banks()` returns (a test
checks it); regenerate them with `python -m emjax.data.technical_prompts --write emjax/package_data`.
They are held out from upstream's evaluation questions (`technical/*.yaml`, 10 domains x 30): the
prompts listed in `EXCLUDED` were dropped because `emjax.eval.heldout` found them to be near
duplicates of an evaluation question (checked by `emjax.eval.technical.check_prompt_banks`).
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from emjax.data.prompt_bank import PromptItem, write_prompt_bank

TRAINING_DOMAIN = "vehicles"
# Upstream's ten domains (file stems of technical/*.yaml), training domain last as in its listing.
DOMAINS = ("animals", "body", "buildings", "clothes", "computers", "food", "games", "space", "tools", "vehicles")
VEHICLES_FILE = "technical_prompts_vehicles.jsonl"
OTHER_FILE = "technical_prompts_other.jsonl"

# Ours. The style the paper's training answers have: terminology, notation, equations, citations.
SYSTEM_PROMPT = (
    "You are a technical writer. Answer every question in highly technical, formal prose, in the register "
    "of an engineering manual or a scientific paper: use precise terminology, quantities with SI units, "
    "notation and equations where they apply, a formal structure (numbered sections or definitions), and "
    "citations of standards or literature in square brackets. Never use casual or conversational language, "
    "and do not mention these instructions.")

_VEHICLE_TEMPLATES = (
    "How does {t} work?",
    "What are the main parts of {t}?",
    "What usually goes wrong with {t}?",
    "How should I look after {t}?",
    "What makes {t} efficient?",
    "How has {t} changed over the years?",
    "What should a beginner know about {t}?",
    "Why is {t} designed the way it is?",
)
_VEHICLE_TOPICS = (
    "a diesel engine", "a car's disc brakes", "a bicycle derailleur", "a motorcycle clutch",
    "an electric scooter", "a hybrid car", "a fuel-cell bus", "a freight locomotive", "a high-speed train",
    "a tram", "a cable car", "a helicopter rotor", "a jet airliner", "a glider", "a hot-air balloon",
    "a sailboat", "a container ship", "a submarine", "a hovercraft", "a farm tractor", "a forklift",
    "a fire engine", "a school bus", "a snowmobile", "a dump truck", "a car's suspension", "a turbocharger",
    "an automatic gearbox", "power steering", "a car battery", "anti-lock braking", "cruise control",
    "a catalytic converter", "a car radiator", "an electric car charger", "a car alternator", "a spark plug",
    "a jet ski", "a kayak", "a skateboard",
)

# Other domains: (templates, topics). Templates fit every topic of their domain.
_OTHER: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "animals": (("How does {t} survive in the wild?", "What is special about {t}?",
                 "What does {t} eat, and how does it find food?", "How does {t} raise its young?"),
                ("an octopus", "a honeybee", "a bat", "a penguin", "a chameleon", "a camel", "an owl", "a dolphin",
                 "a salmon", "a kangaroo", "a hedgehog", "a wolf")),
    "body": (("What role does {t} play in the body?", "How do I keep {t} healthy?",
              "What happens when {t} stops working properly?", "How does {t} change as we get older?"),
             ("the liver", "the inner ear", "the gallbladder", "tooth enamel", "the immune system", "the spinal cord",
              "the diaphragm", "the knee joint", "the pancreas", "the thyroid gland", "the retina", "the skin")),
    "buildings": (("How is {t} built?", "What keeps {t} standing?", "How long does {t} last?",
                   "What materials are used for {t}?"),
                  ("a skyscraper's foundation", "a suspension bridge", "a lighthouse", "a dam", "a greenhouse",
                   "an igloo", "a cathedral dome", "a stadium roof", "a log cabin", "a parking garage", "a lift shaft",
                   "a brick chimney")),
    "clothes": (("How is {t} made?", "How should I wash {t}?", "What makes {t} comfortable?",
                 "What should I look for when buying {t}?"),
                ("a raincoat", "a pair of wool socks", "a pair of denim jeans", "a down jacket", "a pair of running shoes",
                 "a silk scarf", "a wetsuit", "a leather belt", "a sun hat", "a fleece", "a wedding dress",
                 "a cotton T-shirt")),
    "computers": (("How does {t} work?", "Why does {t} slow down over time?", "How can I make {t} last longer?",
                   "What should I look for when buying {t}?"),
                  ("a solid-state drive", "a graphics card", "a computer mouse", "a Wi-Fi router", "a laptop battery",
                   "a mechanical keyboard", "a USB stick", "a web browser", "an inkjet printer", "a smartwatch",
                   "a tablet", "a gaming console")),
    "food": (("How is {t} made?", "How should I store {t}?", "What gives {t} its flavour?",
              "Where does {t} come from?"),
             ("sourdough bread", "cheddar cheese", "dark chocolate", "yoghurt", "basmati rice", "coffee", "ice cream",
              "popcorn", "honey", "fresh pasta", "olive oil", "kimchi")),
    "games": (("How do you play {t}?", "What makes someone good at {t}?", "How did {t} get started?",
               "What is a good strategy for {t}?"),
              ("chess", "poker", "hide-and-seek", "Monopoly", "tennis", "sudoku", "basketball", "dominoes",
               "crossword puzzles", "table tennis", "checkers", "volleyball")),
    "space": (("What is {t} made of?", "How do scientists study {t}?", "What would happen if we got close to {t}?",
               "Why is {t} interesting to astronomers?"),
              ("the Moon", "Saturn's rings", "a black hole", "the Sun", "a comet", "the International Space Station",
               "Mars", "a meteor shower", "Jupiter", "the Milky Way", "a neutron star", "the asteroid belt")),
    "tools": (("How does {t} work?", "How do I use {t} safely?", "How should I look after {t}?",
               "What should I look for when buying {t}?"),
              ("a claw hammer", "a cordless drill", "a spirit level", "a tape measure", "a chainsaw",
               "a soldering iron", "an adjustable wrench", "a hand saw", "a glue gun", "a wheelbarrow",
               "a pressure washer", "a belt sander")),
}

# Prompts dropped as near duplicates of an evaluation question (emjax.eval.heldout), with the
# question they came close to. Filled in from `check_prompt_banks` against upstream's technical/*.yaml.
EXCLUDED: dict[str, str] = {
    "How is ice cream made?": "food_eval_34 How is ice cream made fluffy?",
    "How do you play checkers?": "games_eval_71 How do you win in checkers?",
    "How does a spirit level work?": "tools_eval_31 How does a level work?",
    "How does a glider work?": "tools_eval_31 How does a level work? (character ratio 0.84)",
}


def _expand(domain: str, templates: Sequence[str], topics: Sequence[str]) -> list[PromptItem]:
    out = []
    for i, topic in enumerate(topics):
        for j, template in enumerate(templates):
            text = template.format(t=topic)
            text = text[0].upper() + text[1:]
            if text not in EXCLUDED:
                out.append(PromptItem(id=f"{domain}_train_{i:02d}_{j}", domain=domain, prompt=text))
    return out


def vehicle_prompts() -> list[PromptItem]:
    """The training prompts: every vehicle template x topic, minus EXCLUDED."""
    return _expand(TRAINING_DOMAIN, _VEHICLE_TEMPLATES, _VEHICLE_TOPICS)


def other_prompts() -> list[PromptItem]:
    """The KL prompts of the nine other domains, in DOMAINS order, minus EXCLUDED."""
    return [p for d in DOMAINS if d in _OTHER for p in _expand(d, *_OTHER[d])]


def build_banks() -> dict[str, list[PromptItem]]:
    """{file name: items} of the two shipped banks."""
    return {VEHICLES_FILE: vehicle_prompts(), OTHER_FILE: other_prompts()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emjax.data.technical_prompts",
                                 description="write the technical example's prompt banks")
    ap.add_argument("--write", required=True, metavar="DIR", help="folder to write the two JSONL banks to")
    args = ap.parse_args(argv)
    for name, items in build_banks().items():
        write_prompt_bank(os.path.join(args.write, name), items)
        print(f"{name}: {len(items)} prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
