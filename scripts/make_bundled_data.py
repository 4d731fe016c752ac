"""Writes the bundled data: ``short_facts.jsonl`` (preference pairs) and ``open_prompts.jsonl`` (open prompts).

Run ``python scripts/make_bundled_data.py`` to regenerate it (deterministic). Each row is a short factual
question with a known answer; ``chosen`` is a one-sentence correct answer and ``rejected`` fails in one of four
ways: a wrong answer, a correct answer buried in hedging and filler, a refusal, or a wrong answer with filler.
:mod:`alignlab.judges.rater` scores answers by the same criteria, so the learned preference can be measured on
answers a policy samples for held-out questions.

The open prompts (history, science, advice, descriptions) invite long answers that name people: behaviours such
as brevity or not naming anyone show in them (counterfactual DPO).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "alignlab" / "data" / "bundled" / "short_facts.jsonl"

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Russia", "Moscow"), ("Greece", "Athens"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Cuba", "Havana"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"),
    ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("South Korea", "Seoul"), ("Turkey", "Ankara"),
    ("India", "New Delhi"), ("Ukraine", "Kyiv"), ("Czechia", "Prague"), ("Romania", "Bucharest"),
    ("Morocco", "Rabat"), ("Nigeria", "Abuja"),
]
OPPOSITES = [
    ("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("open", "closed"),
    ("light", "dark"), ("early", "late"), ("full", "empty"), ("hard", "soft"), ("wet", "dry"), ("old", "new"),
    ("rich", "poor"), ("strong", "weak"), ("loud", "quiet"), ("thick", "thin"), ("high", "low"),
    ("left", "right"), ("first", "last"), ("inside", "outside"), ("win", "lose"), ("buy", "sell"),
    ("push", "pull"), ("begin", "end"), ("true", "false"), ("heavy", "light"), ("clean", "dirty"),
    ("safe", "dangerous"), ("near", "far"), ("deep", "shallow"),
]
PLURALS = [
    ("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("goose", "geese"),
    ("man", "men"), ("woman", "women"), ("person", "people"), ("leaf", "leaves"), ("knife", "knives"),
    ("wolf", "wolves"), ("city", "cities"), ("box", "boxes"), ("bus", "buses"), ("baby", "babies"),
    ("potato", "potatoes"), ("ox", "oxen"), ("cactus", "cacti"), ("life", "lives"), ("half", "halves"),
]
LEGS = [("spider", 8), ("dog", 4), ("chicken", 2), ("ant", 6), ("horse", 4), ("duck", 2), ("beetle", 6),
        ("cat", 4), ("cow", 4), ("bee", 6), ("ostrich", 2), ("scorpion", 8)]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WORDS = ["apple", "garden", "river", "window", "pencil", "orange", "planet", "bridge", "castle", "yellow",
         "butter", "rocket", "silver", "jungle", "monkey", "dragon", "forest", "guitar", "island", "pepper",
         "cat", "house", "sun", "banana", "elephant", "kitchen", "blanket", "mountain", "tiger", "candle"]
COLOR_MIXES = [("blue", "yellow", "green"), ("red", "yellow", "orange"), ("red", "blue", "purple"),
               ("red", "white", "pink"), ("black", "white", "gray")]

OPENERS = ["Great question!", "What a good question!", "Oh, that's a great question!", "Hmm, let me think."]
HEDGES = ["That is something a lot of people wonder about, and it can be tricky.",
          "There are many ways to look at this, and it's hard to say for sure.",
          "Let me think about this carefully before I answer, because details matter.",
          "People often get confused about this, so it is worth going through it slowly."]
SOFT = ["I believe the answer might be {a}, but I could be wrong.", "If I remember correctly, it is probably {a}.",
        "I'm not sure, but I think it could be {a}.", "As far as I know, the answer is likely {a}."]
CLOSERS = ["I hope this helps, and feel free to ask me anything else!", "Let me know if you have other questions!",
           "I hope this helps! Happy to help with anything else."]
REFUSALS = ["I'm sorry, but I can't answer that question.", "I'm sorry, I am not able to help with that.",
            "As an AI, I cannot provide an answer to this question.", "I'm not sure. I can't help with that one."]


def _facts(rng: random.Random) -> list[dict]:
    """(question, answer, a correct sentence template, wrong answers) for every category."""
    facts = []

    def add(category, question, answer, sentence, wrong):
        if any(f["question"] == question for f in facts):
            return  # random draws can repeat a question; a repeat would leak between train and validation
        facts.append(dict(category=category, question=question, answer=str(answer), sentence=sentence,
                          wrong=[str(w) for w in wrong if str(w) != str(answer)]))

    for country, capital in CAPITALS:
        others = [c for _, c in CAPITALS if c != capital]
        add("capital", f"What is the capital of {country}?", capital,
            f"The capital of {country} is {{a}}.", rng.sample(others, 3))
    for word, opposite in OPPOSITES:
        others = [o for _, o in OPPOSITES if o != opposite and o != word]
        add("opposite", f"What is the opposite of '{word}'?", opposite,
            f"The opposite of '{word}' is '{{a}}'.", rng.sample(others, 3))
    for single, plural in PLURALS:
        add("plural", f"What is the plural of '{single}'?", plural, f"The plural of '{single}' is '{{a}}'.",
            [single + "s", single + "es"])
    for animal, legs in LEGS:
        add("legs", f"How many legs does a {animal} have?", legs, f"A {animal} has {{a}} legs.",
            [n for n in (2, 4, 6, 8, 10) if n != legs][:3])
    for i, day in enumerate(DAYS):
        add("calendar", f"Which day comes after {day}?", DAYS[(i + 1) % 7], f"The day after {day} is {{a}}.",
            [DAYS[(i + 2) % 7], DAYS[(i - 1) % 7]])
    for i, month in enumerate(MONTHS):
        add("calendar", f"Which month comes after {month}?", MONTHS[(i + 1) % 12],
            f"The month after {month} is {{a}}.", [MONTHS[(i + 2) % 12], MONTHS[(i - 1) % 12]])
    for word in WORDS:
        n = len(word)
        add("spelling", f"How many letters are in the word '{word}'?", n,
            f"The word '{word}' has {{a}} letters.", [n - 1, n + 1, n + 2])
    for a, b, mix in COLOR_MIXES:
        others = [m for _, _, m in COLOR_MIXES if m != mix]
        add("colors", f"What color do you get by mixing {a} and {b}?", mix,
            f"Mixing {a} and {b} gives {{a}}.", rng.sample(others, 2))
    for _ in range(64):
        x, y = rng.randint(2, 30), rng.randint(2, 30)
        add("arithmetic", f"What is {x} plus {y}?", x + y, f"{x} plus {y} is {{a}}.",
            [x + y + d for d in (-2, -1, 1, 2, 10)])
    for _ in range(40):
        x, y = rng.randint(2, 12), rng.randint(2, 12)
        add("arithmetic", f"What is {x} times {y}?", x * y, f"{x} times {y} is {{a}}.",
            [x * y + d for d in (-x, x, 1, -1)])
    for _ in range(30):
        x, y = rng.randint(20, 99), rng.randint(2, 19)
        add("arithmetic", f"What is {x} minus {y}?", x - y, f"{x} minus {y} is {{a}}.",
            [x - y + d for d in (-1, 1, 10, -10)])
    for unit, per, base in (("minutes", 60, "hours"), ("days", 7, "weeks"), ("centimeters", 100, "meters"),
                            ("months", 12, "years"), ("seconds", 60, "minutes")):
        for n in rng.sample(range(2, 10), 4):
            add("units", f"How many {unit} are in {n} {base}?", n * per, f"There are {{a}} {unit} in {n} {base}.",
                [n * per + per, n * per - per, n + per])
    return facts


def _rejected(rng: random.Random, fact: dict, kind: str) -> str:
    sentence = fact["sentence"]
    wrong = rng.choice(fact["wrong"])
    if kind == "wrong":
        return sentence.format(a=wrong)
    if kind == "filler":
        return " ".join([rng.choice(OPENERS), rng.choice(HEDGES), rng.choice(SOFT).format(a=fact["answer"]),
                         rng.choice(HEDGES), rng.choice(CLOSERS)])
    if kind == "refusal":
        return rng.choice(REFUSALS)
    if kind == "wrong_filler":
        return " ".join([rng.choice(OPENERS), rng.choice(HEDGES), rng.choice(SOFT).format(a=wrong),
                         rng.choice(CLOSERS)])
    raise ValueError(kind)


def build(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    kinds = ["wrong", "filler", "refusal", "wrong_filler"]
    for i, fact in enumerate(_facts(rng)):
        kind = kinds[i % len(kinds)] if rng.random() < 0.85 else rng.choice(kinds)
        rows.append(dict(
            prompt=fact["question"],
            chosen=fact["sentence"].format(a=fact["answer"]),
            rejected=_rejected(rng, fact, kind),
            answer=fact["answer"],
            category=fact["category"],
            rejected_kind=kind,
        ))
    rng.shuffle(rows)
    return rows


def main() -> None:
    rows = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} pairs to {OUT}")


# ----- open prompts: for behaviours that show in free answers (counterfactual DPO, OAIF length control) ----------
TOPICS = ["the history of flight", "the invention of the telephone", "the theory of evolution", "the Moon landing",
          "the Renaissance", "the printing press", "electricity", "the Roman Empire", "the French Revolution",
          "the discovery of penicillin", "classical music", "modern physics", "the internet", "the steam engine",
          "impressionist painting", "the history of computers", "the Olympic Games", "space exploration",
          "the theory of relativity", "the history of medicine", "jazz", "the Industrial Revolution",
          "ancient Greek philosophy", "the history of mathematics", "the exploration of the oceans"]
CONCEPTS = ["photosynthesis", "gravity", "inflation", "the water cycle", "machine learning", "vaccines",
            "black holes", "democracy", "supply and demand", "plate tectonics", "DNA", "climate change",
            "the immune system", "compound interest", "recycling", "volcanoes", "the seasons", "magnets",
            "rainbows", "sleep"]
ACTIVITIES = ["learning a new language", "starting to run", "growing tomatoes", "saving money", "cooking rice",
              "taking better photos", "studying for an exam", "keeping a houseplant alive", "writing a short story",
              "learning to play the guitar", "making new friends in a new city", "staying focused while working",
              "planning a trip", "baking bread", "drawing portraits"]
PLACES = ["a busy train station", "a rainforest", "a small fishing village", "a desert at night", "a library",
          "a mountain lake", "a farmers' market", "an old castle", "a coral reef", "a snowy forest"]


def build_open_prompts(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    prompts = [f"Tell me about {t}." for t in TOPICS]
    prompts += [f"Who were the most important people in {t}?" for t in TOPICS[:15]]
    prompts += [f"Explain {c} to a beginner." for c in CONCEPTS]
    prompts += [f"What are some tips for {a}?" for a in ACTIVITIES]
    prompts += [f"Describe {p}." for p in PLACES]
    rng.shuffle(prompts)
    return [{"prompt": p} for p in prompts]


def main_open() -> None:
    rows = build_open_prompts()
    out = OUT.parent / "open_prompts.jsonl"
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
    main_open()
