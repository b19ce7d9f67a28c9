"""Synthetic long-context tasks in the spirit of RULER and NeedleBench, generated from a
seed and fitted to an exact prompt length in the served model's tokens.

Each task builds a `Sample`: a chat prompt (instruction, context, question, and an
assistant answer prefix the model continues, as RULER does), the reference answers, and
how to score them. Context is filler units (prose sentences, list words, JSON pairs)
with the task's facts inserted at seeded depths; the number of filler units is searched
so the rendered prompt lands on the target length.
"""

from __future__ import annotations

import random
import string
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtests.haystack import sentence, sentences

NAMES = ["Alice", "Bruno", "Chen", "Dalia", "Emeka", "Freya", "Goran", "Hana", "Ivan", "Jun",
         "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara",
         "Umar", "Vera", "Wes", "Xiu", "Yara", "Zane"]
SURNAMES = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak", "Haddad", "Silva", "Kowalski",
            "Brennan", "Achebe", "Varga", "Rossi", "Ivanova", "Mensah", "Duarte", "Keller"]
ADJ = ["amber", "silent", "crimson", "wandering", "hollow", "bright", "frozen", "gentle",
       "restless", "golden", "hidden", "ancient", "swift", "patient", "scarlet", "quiet"]
NOUN = ["falcon", "harbor", "lantern", "meadow", "compass", "glacier", "orchard", "violin",
        "canyon", "ember", "thistle", "beacon", "quarry", "sparrow", "tunnel", "willow"]
CITIES = ["Zarnov", "Quellport", "Mirabel", "Ostrava Nova", "Kelmere", "Vantis", "Dunhollow",
          "Serafin", "Bralto", "Ithmoor", "Caldera Bay", "Peloria"]


@dataclass
class Sample:
    id: str
    task: str
    length: int  # the requested prompt length in tokens
    messages: list[dict]
    answers: list[str]
    metric: str  # "all": every answer must appear; "part": any one counts
    max_tokens: int
    prompt_tokens: int = 0
    meta: dict = field(default_factory=dict)


@dataclass
class Spec:
    """What a task generator returns before fitting: how to render N filler units."""

    instruction: str
    question: str
    answer_prefix: str | None  # None: a plain user turn, the model answers from scratch
    answers: list[str]
    metric: str
    max_tokens: int
    filler: Callable[[random.Random], str]  # one filler unit
    facts: list[str]  # inserted among the filler at seeded depths
    wrap: Callable[[list[str]], str] = " ".join  # filler+facts units -> context text
    derive: Callable[[list[str]], list[str]] | None = None  # answers from the final units


def _key(rng: random.Random) -> str:
    return f"{rng.choice(ADJ)}-{rng.choice(NOUN)}"


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _distinct(rng: random.Random, make, n: int) -> list:
    out: list = []
    while len(out) < n:
        value = make(rng)
        if value not in out:
            out.append(value)
    return out


def _niah(rng, n_keys: int, n_values: int, n_queries: int) -> Spec:
    keys = _distinct(rng, _key, n_keys)
    values = {k: _distinct(rng, _number, n_values if i == 0 else 1) for i, k in enumerate(keys)}
    facts = [f"One of the special magic numbers for {k} is: {v}." for k in keys for v in values[k]]
    queried = keys[:n_queries]
    answers = [v for k in queried for v in values[k]]
    if n_queries > 1:
        question = ("What are all the special magic numbers for "
                    f"{', '.join(queried[:-1])} and {queried[-1]} mentioned in the provided text?")
        prefix = f"The special magic numbers for {', '.join(queried)} mentioned in the text are"
    elif n_values > 1:
        question = f"What are all the special magic numbers for {keys[0]} mentioned in the text?"
        prefix = f"The special magic numbers for {keys[0]} mentioned in the text are"
    else:
        question = f"What is the special magic number for {keys[0]} mentioned in the text?"
        prefix = f"The special magic number for {keys[0]} mentioned in the text is"
    return Spec(
        instruction="Some special magic numbers are hidden within the following text. "
        "Make sure to memorize them. I will quiz you about the numbers afterwards.",
        question=question, answer_prefix=prefix, answers=answers, metric="all",
        max_tokens=12 * len(answers) + 8, filler=sentence, facts=facts,
    )


def niah_single(rng):
    return _niah(rng, 1, 1, 1)


def niah_multikey(rng):
    return _niah(rng, 4, 1, 1)


def niah_multivalue(rng):
    return _niah(rng, 1, 4, 1)


def niah_multiquery(rng):
    return _niah(rng, 4, 1, 4)


def _var(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


def variable_tracking(rng, hops: int = 4, chains: int = 2) -> Spec:
    names = _distinct(rng, _var, hops * chains + chains)
    values = _distinct(rng, lambda r: str(r.randint(10000, 99999)), chains)
    facts, target = [], []
    for c in range(chains):
        chain = names[c * (hops + 1):(c + 1) * (hops + 1)]
        facts.append(f"VAR {chain[0]} = {values[c]}.")
        facts += [f"VAR {chain[i]} = VAR {chain[i - 1]}." for i in range(1, len(chain))]
        if c == 0:
            target = chain
    return Spec(
        instruction="Memorize and track the chain(s) of variable assignment hidden in the "
        "following text.",
        question=f"Find all variables that are assigned the value {values[0]} in the text above.",
        answer_prefix=f"Answer: According to the chain(s) of variable assignment in the text "
        f"above, {len(target)} variables are assigned the value {values[0]}, they are:",
        answers=target, metric="all", max_tokens=48, filler=sentence, facts=facts,
    )


WORD_POOL = sorted({w for w in " ".join(ADJ + NOUN + [n.lower() for n in NAMES]).split()} | {
    "river", "stone", "cloud", "pepper", "marble", "button", "candle", "garden", "mirror",
    "ribbon", "saddle", "tablet", "velvet", "walnut", "yarrow", "basket", "cobalt", "dagger",
    "engine", "fabric", "gravel", "helmet", "island", "jacket", "kettle", "ladder", "magnet",
    "needle", "oyster", "pillow", "rocket", "signal", "timber", "umbrella", "vessel"})


def _top(units: list[str], n: int) -> list[str]:
    return [w for w, _ in Counter(units).most_common(n)]


def common_words(rng, n_common: int = 10) -> Spec:
    """RULER CWE: 70% of the list is drawn from ten common words, the rest from ~70 others,
    so a common word is about 16 times as frequent; answers are the list's true top 10."""
    words = rng.sample(WORD_POOL, len(WORD_POOL))
    common, rare = words[:n_common], words[n_common:]
    return Spec(
        instruction="Below is a numbered list of words. In these words, some appear more "
        "often than others. Memorize the ones that appear most often.",
        question=f"What are the {n_common} most common words in the above list?",
        answer_prefix=f"Answer: The top {n_common} words that appear most often in the list are:",
        answers=[], metric="all", max_tokens=64, facts=[],
        filler=lambda r: r.choice(common) if r.random() < 0.7 else r.choice(rare),
        wrap=lambda units: " ".join(f"{i + 1}. {w}" for i, w in enumerate(units)),
        derive=lambda units: _top(units, n_common),
    )


def frequent_words(rng, vocab: int = 200, alpha: float = 2.0) -> Spec:
    """RULER FWE: coded words drawn from a Zipf(alpha) law; answers are the three most
    frequent in the text as generated."""
    codes = _distinct(rng, lambda r: "".join(r.choice(string.ascii_lowercase) for _ in range(
        r.randint(3, 6))), vocab)
    weights = [1 / (rank + 1) ** alpha for rank in range(vocab)]
    return Spec(
        instruction="Read the following coded text and track the frequency of each coded word. "
        "Find the three most frequently appeared coded words.",
        question="What are the three most frequently appeared words in the above coded text?",
        answer_prefix="Answer: According to the coded text above, the three most frequently "
        "appeared words are:",
        answers=[], metric="all", max_tokens=40, facts=[],
        filler=lambda r: r.choices(codes, weights)[0],
        derive=lambda units: _top(units, 3),
    )


def kv_uuid(rng) -> Spec:
    """Key-value retrieval over a JSON object of random UUIDs (Lost in the Middle)."""
    def pair(r):
        return f'"{uuid.UUID(int=r.getrandbits(128))}": "{uuid.UUID(int=r.getrandbits(128))}"'

    target = pair(rng)
    key, value = (part.strip('" ') for part in target.split(":"))
    return Spec(
        instruction="Extract the value corresponding to the specified key in the JSON object "
        "below.",
        question=f'Key: "{key}"\nThe value associated with the specified key is:',
        answer_prefix=f'The value associated with "{key}" is "',
        answers=[value], metric="all", max_tokens=48, filler=pair, facts=[target],
        wrap=lambda units: "JSON data:\n{" + ", ".join(units) + "}",
    )


def _people(rng: random.Random, n: int) -> list[str]:
    return _distinct(rng, lambda r: f"{r.choice(NAMES)} {r.choice(SURNAMES)}", n)


def chained_facts(rng, hops: int = 3, distractors: int = 3) -> Spec:
    """NeedleBench multi-needle reasoning: the answer needs every needle of a chain;
    other people live in other cities, so finding "lives in" alone does not answer."""
    people = _people(rng, hops + 1 + distractors)
    chain, others = people[:hops + 1], people[hops + 1:]
    cities = rng.sample(CITIES, 1 + distractors)
    facts = [f"{chain[i]}'s mentor is {chain[i + 1]}." for i in range(hops)]
    facts.append(f"{chain[-1]} lives in the city of {cities[0]}.")
    facts += [f"{who} lives in the city of {city}." for who, city in zip(others, cities[1:])]
    rng.shuffle(facts)
    relation = " of ".join(["the mentor"] * hops)
    return Spec(
        instruction="The following text contains some facts about people. Read it carefully; "
        "you will need to combine several facts to answer the question.",
        question=f"In which city does {relation} of {chain[0]} live?",
        answer_prefix=f"Answer: {relation[0].upper() + relation[1:]} of {chain[0]} lives in "
        "the city of",
        answers=[cities[0]], metric="all", max_tokens=16, filler=sentence, facts=facts,
    )


def ancestral_trace(rng, generations: int = 5) -> Spec:
    """NeedleBench ancestral trace challenge: follow parent links to the eldest ancestor."""
    people = _people(rng, generations)
    facts = [f"{people[i]} is the father of {people[i + 1]}." for i in range(generations - 1)]
    rng.shuffle(facts)
    return Spec(
        instruction="The following text contains family relationships. Read it carefully.",
        question=f"Who is the earliest ancestor of {people[-1]} that can be traced in the text?",
        answer_prefix=f"Answer: The earliest ancestor of {people[-1]} that can be traced is",
        answers=[people[0]], metric="all", max_tokens=16, filler=sentence, facts=facts,
    )


def prose(rng) -> Spec:
    """Load-test prompts: plain prose to continue; no answer, no assistant prefix."""
    return Spec(
        instruction="Read the following story notes and continue the story in the same style.",
        question="Continue the story.", answer_prefix=None, answers=[], metric="all",
        max_tokens=128, filler=sentence, facts=[],
    )


TASKS: dict[str, Callable[[random.Random], Spec]] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "variable_tracking": variable_tracking,
    "common_words": common_words,
    "frequent_words": frequent_words,
    "kv_uuid": kv_uuid,
    "chained_facts": chained_facts,
    "ancestral_trace": ancestral_trace,
    "prose": prose,
}
QUALITY_TASKS = [name for name in TASKS if name != "prose"]


def render(spec: Spec, pad: list[str], units: list[str]) -> list[dict]:
    """Chat messages: the user turn, then the assistant's answer prefix to continue."""
    context = spec.wrap(units)
    if pad:
        context = " ".join(pad) + "\n" + context
    messages = [
        {"role": "user", "content": f"{spec.instruction}\n\n{context}\n\n{spec.question}"}]
    if spec.answer_prefix is not None:
        messages.append({"role": "assistant", "content": spec.answer_prefix})
    return messages


def count_tokens(tokenizer, messages: list[dict]) -> int:
    """Prompt tokens as the server renders them: continuing a final assistant turn, or
    opening a new one."""
    prefixed = messages[-1]["role"] == "assistant"
    return len(tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=False, add_generation_prompt=not prefixed,
        continue_final_message=prefixed))


def _place(facts: list[str], filler: list[str], depths: list[float]) -> list[str]:
    units = list(filler)
    for depth, fact in sorted(zip(depths, facts), reverse=True):
        units.insert(round(depth * len(filler)), fact)
    return units


def _max_fitting(fits: Callable[[int], bool], hi: int) -> int:
    """Largest n in [0, hi] with fits(n) (fits is monotone: true up to some n)."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def build_sample(task: str, target_tokens: int, index: int, seed: int, tokenizer) -> Sample:
    """One sample of `task` whose chat prompt is `target_tokens` long (to within a few
    tokens) in `tokenizer`; deterministic in (task, target_tokens, index, seed)."""
    rng = random.Random(f"{seed}:{task}:{target_tokens}:{index}")
    spec = TASKS[task](rng)
    depths = [rng.random() for _ in spec.facts]
    filler_rng = random.Random(rng.random())
    per_unit = max(1, len(tokenizer.encode(spec.filler(random.Random(0)))))
    pool = [spec.filler(filler_rng) for _ in range(2 * target_tokens // per_unit + 16)]
    pad_words = " ".join(sentences(filler_rng, 8)).split()

    def tokens(n_units: int, n_pad: int = 0) -> int:
        units = _place(spec.facts, pool[:n_units], depths)
        return count_tokens(tokenizer, render(spec, pad_words[:n_pad], units))

    if tokens(0) > target_tokens:
        raise ValueError(f"{task}: {target_tokens} tokens is too short for the task itself "
                         f"({tokens(0)} tokens without any context)")
    n = _max_fitting(lambda k: tokens(k) <= target_tokens, len(pool))
    more = random.Random(f"{seed}:{task}:{target_tokens}:{index}:more")
    while n == len(pool):  # short units: the pool ran out before the prompt was full
        pool += [spec.filler(more) for _ in range(len(pool))]
        n = _max_fitting(lambda k: tokens(k) <= target_tokens, len(pool))
    n_pad = _max_fitting(lambda k: tokens(n, k) <= target_tokens, len(pad_words))
    units = _place(spec.facts, pool[:n], depths)
    messages = render(spec, pad_words[:n_pad], units)
    answers = spec.derive(pool[:n]) if spec.derive else spec.answers
    return Sample(
        id=f"{task}-{target_tokens}-{index}", task=task, length=target_tokens,
        messages=messages, answers=answers,
        metric=spec.metric, max_tokens=spec.max_tokens,
        prompt_tokens=count_tokens(tokenizer, messages),
        meta={"depths": depths, "filler_units": n},
    )


def build_samples(tasks: list[str], lengths: list[int], n: int, seed: int,
                  tokenizer) -> list[Sample]:
    return [build_sample(task, length, i, seed, tokenizer)
            for length in lengths for task in tasks for i in range(n)]
