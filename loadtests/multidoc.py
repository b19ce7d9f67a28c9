"""Multi-document QA for the RAG path: 16-32 generated company records, every one
holding the same kinds of facts (founder, year, city, archive code) among seeded prose,
and a question whose answer sits in one record (its archive code) or two (the codes of two
companies). Fitted to a prompt length in the served model's tokens, like `tasks`.

A sample carries the documents (`meta["documents"]`, for a request's `documents`) and
the question with a RULER-style answer prefix (`messages`); `single_prompt` puts every
document in one user message, as a client without the RAG path would."""

from __future__ import annotations

import random

from loadtests.haystack import sentence
from loadtests.tasks import ADJ, CITIES, NAMES, NOUN, SURNAMES, Sample, _max_fitting, count_tokens

INSTRUCTION = "Answer the question from the company records."


def companies(rng: random.Random, n: int) -> list[str]:
    pairs = rng.sample([(a, b) for a in ADJ for b in NOUN], n)
    return [f"{a.title()} {b.title()} Works" for a, b in pairs]


def record(rng: random.Random, company: str, code: str, filler: int) -> str:
    facts = [
        f"{company} was founded in {rng.randint(1850, 1990)} by {rng.choice(NAMES)} "
        f"{rng.choice(SURNAMES)}.",
        f"The headquarters of {company} are in {rng.choice(CITIES)}.",
        f"The archive code of {company} is {code}.",
    ]
    units = [sentence(rng) for _ in range(filler)]
    for fact in facts:
        units.insert(rng.randint(0, len(units)), fact)
    return " ".join(units)


def single_prompt(sample: Sample) -> list[dict]:
    """Every document in the user message, the question last (no RAG path)."""
    documents = "\n\n".join(f"Document {d['id']}:\n{d['text']}" for d in sample.meta["documents"])
    question = sample.messages[0]["content"]
    return [{"role": "user", "content": f"{documents}\n\n{question}"}, *sample.messages[1:]]


def build_multidoc(n_docs: int, target_tokens: int, index: int, seed: int, tokenizer) -> Sample:
    """Even `index`: the answer is in one document; odd: in two."""
    rng = random.Random(f"{seed}:multidoc:{n_docs}:{target_tokens}:{index}")
    names = companies(rng, n_docs)
    codes = [str(c) for c in rng.sample(range(100000, 999999), n_docs)]
    asked = rng.sample(range(n_docs), 1 if index % 2 == 0 else 2)
    if len(asked) == 1:
        c = names[asked[0]]
        question = f"What is the archive code of {c}?"
        prefix = f"Answer: The archive code of {c} is"
    else:
        first, second = names[asked[0]], names[asked[1]]
        question = f"What are the archive codes of {first} and of {second}?"
        prefix = f"Answer: The archive code of {first} is"
    messages = [{"role": "user", "content": f"{INSTRUCTION}\n\nQuestion: {question}"},
                {"role": "assistant", "content": prefix}]
    seeds = [rng.random() for _ in names]

    def sample(filler: int) -> Sample:
        documents = [{"id": f"record-{i}", "text": record(random.Random(s), c, code, filler)}
                     for i, (s, c, code) in enumerate(zip(seeds, names, codes))]
        return Sample(id=f"multidoc_qa-{target_tokens}-{index}", task="multidoc_qa",
                      length=target_tokens, messages=messages,
                      answers=[codes[i] for i in asked], metric="all",
                      max_tokens=24 * len(asked),
                      meta={"documents": documents, "answer_documents": asked,
                            "question": question})

    filler = _max_fitting(
        lambda f: count_tokens(tokenizer, single_prompt(sample(f))) <= target_tokens, 200)
    out = sample(filler)
    out.prompt_tokens = count_tokens(tokenizer, single_prompt(out))
    return out
