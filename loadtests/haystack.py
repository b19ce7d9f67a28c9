"""Seeded prose for haystacks: varied sentences from a small grammar, never one sentence
repeated, so a model cannot skip the haystack by pattern and compression policies face
text with real diversity (RULER uses Paul Graham essays; we cannot download them)."""

from __future__ import annotations

import random

SUBJECTS = [
    "The harbour master", "A retired engineer", "The village council", "Our neighbour",
    "The orchestra", "A travelling merchant", "The night watchman", "The botanist",
    "The young apprentice", "An old fisherman", "The librarian", "A team of surveyors",
    "The baker on the corner", "The school principal", "A visiting astronomer",
    "The ferry captain", "The museum curator", "A group of hikers", "The blacksmith",
    "The weather station", "The city archive", "A local historian", "The shepherd",
]
VERBS = [
    "described", "repaired", "carefully examined", "wrote a long letter about",
    "argued for weeks about", "painted", "measured", "remembered", "photographed",
    "quietly moved", "catalogued", "sold", "borrowed", "rebuilt", "studied",
    "complained about", "celebrated", "mapped", "tested", "cleaned",
]
OBJECTS = [
    "the stone bridge", "an unusual clock", "the northern lighthouse", "a box of maps",
    "the winter garden", "a cracked bell", "the old railway line", "three copper kettles",
    "the market square", "a forgotten manuscript", "the tidal mill", "a pair of telescopes",
    "the orchard wall", "a crate of apples", "the river lock", "the chapel organ",
    "a collection of seashells", "the granary roof", "the signal tower", "a wooden boat",
]
PLACES = [
    "near the eastern gate", "before the autumn fair", "during the long storm",
    "after the harvest", "at the edge of the marsh", "in the early morning",
    "behind the town hall", "on the hill above the valley", "while the tide was out",
    "under a grey sky", "late in the evening", "beside the frozen canal",
    "at the end of the season", "in a quiet corner of the port",
]
CLAUSES = [
    "and nobody could agree on what it meant", "which surprised almost everyone",
    "although the records disagree", "because the old plans had been lost",
    "as the newspaper later reported", "while the children watched from the steps",
    "and the story was told for many years", "so the work had to be done twice",
    "but the result was better than expected", "even though it had rained all week",
]


def sentence(rng: random.Random) -> str:
    parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES)]
    if rng.random() < 0.5:
        parts.append(rng.choice(CLAUSES))
    return " ".join(parts) + "."


def sentences(rng: random.Random, n: int) -> list[str]:
    return [sentence(rng) for _ in range(n)]
