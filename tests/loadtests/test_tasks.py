"""Task generators: deterministic per seed, exact to the requested length, and the answers
really are in (or derived from) the prompt."""

from __future__ import annotations

import pytest

from loadtests.tasks import QUALITY_TASKS, build_sample, count_tokens



@pytest.mark.parametrize("task", QUALITY_TASKS + ["prose"])
@pytest.mark.parametrize("length", [1024, 4096])
def test_length_is_exact_within_2_percent(tokenizer, task, length):
    sample = build_sample(task, length, 3, 7, tokenizer)
    assert sample.prompt_tokens == count_tokens(tokenizer, sample.messages)
    assert 0.98 * length <= sample.prompt_tokens <= length


@pytest.mark.parametrize("task", QUALITY_TASKS)
def test_deterministic_per_seed(tokenizer, task):
    a, b = (build_sample(task, 1024, 0, 11, tokenizer) for _ in range(2))
    assert (a.messages, a.answers) == (b.messages, b.answers)
    c = build_sample(task, 1024, 0, 12, tokenizer)
    assert c.messages != a.messages


@pytest.mark.parametrize("task", ["niah_single", "niah_multikey", "niah_multivalue",
                                  "niah_multiquery", "variable_tracking", "kv_uuid"])
def test_answers_are_in_the_context(tokenizer, task):
    sample = build_sample(task, 2048, 1, 5, tokenizer)
    context = sample.messages[0]["content"]
    assert sample.answers and all(a in context for a in sample.answers)


def test_common_words_answers_are_the_true_top_ten(tokenizer):
    from collections import Counter

    sample = build_sample("common_words", 2048, 2, 5, tokenizer)
    listing = sample.messages[0]["content"].split("\n\n")[1]
    words = [tok for tok in listing.split() if not tok.endswith(".")]
    counts = Counter(words)
    assert set(sample.answers) == {w for w, _ in counts.most_common(10)}
    others = [c for w, c in counts.items() if w not in sample.answers]
    assert min(counts[w] for w in sample.answers) > 2 * max(others)  # a clear margin


def test_haystack_is_varied_prose(tokenizer):
    sample = build_sample("niah_single", 4096, 0, 0, tokenizer)
    sentences = [s for s in sample.messages[0]["content"].split(". ") if s]
    assert len(set(sentences)) > 0.8 * len(sentences)


def test_multi_needle_reasoning_needs_every_fact(tokenizer):
    sample = build_sample("chained_facts", 2048, 0, 3, tokenizer)
    context = sample.messages[0]["content"]
    assert context.count("'s mentor is ") == 3 and sample.answers[0] in context
    assert context.count(" lives in the city of ") == 4  # the answer and three distractors
    trace = build_sample("ancestral_trace", 2048, 0, 3, tokenizer)
    assert trace.messages[0]["content"].count(" is the father of ") == 4


def test_short_filler_units_still_fill_the_prompt(tokenizer):
    # the one sample of the recorded 4k baseline that fell short (3835 tokens)
    sample = build_sample("frequent_words", 4096, 14, 0, tokenizer)
    assert 0.98 * 4096 <= sample.prompt_tokens <= 4096


def test_too_short_target_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="too short"):
        build_sample("niah_multiquery", 32, 0, 0, tokenizer)
