"""Verifiable instructions on training prompts (moaa/benchmarks/verifiable.py): each kind's wording says what
IFEval's checker checks (an answer that does what the words say passes, one that does not fails), the draws
are seeded and never pair conflicting kinds, and the counting helpers by hand."""

import json
import random

import pytest

from moaa.benchmarks import verifiable
from moaa.benchmarks.verifiable import KINDS, ConstraintsConfig, PairedGain, PassRate

BODY = "Rivers carve valleys over long stretches of time"
# The case checkers also ask langdetect whether the text is English, which short all-caps text often is not
# to it: a longer, plainer sentence.
CAPS = "THE RIVER FLOWS THROUGH THE VALLEY AND THE PEOPLE WHO LIVE THERE ARE HAPPY WITH THE WATER IT BRINGS."


def _follow(kind: str, a: dict) -> tuple[str, str]:
    """(an answer that does what the phrase asks, one that does not), for the drawn parameters ``a``."""
    words = lambda n: " ".join(["word"] * n)  # noqa: E731
    return {
        "punctuation:no_comma": lambda: (BODY + ".", "Rivers, valleys and time."),
        "change_case:english_lowercase": lambda: (BODY.lower() + " and nothing else.", BODY + "."),
        "change_case:english_capital": lambda: (CAPS, CAPS.capitalize()),
        "detectable_format:title": lambda: ("<<On rivers>>\n" + BODY, BODY),
        "detectable_content:postscript": lambda: (
            f"{BODY}.\n\n{a.get('postscript_marker')} Thanks.",
            f"{BODY}.\n\nThanks.",
        ),
        "length_constraints:number_words": lambda: (
            (words(a["num_words"] - 5), words(a["num_words"] + 5))
            if a.get("relation") == "less than"
            else (words(a["num_words"] + 5), words(a["num_words"] - 5))
        ),
        "length_constraints:number_sentences": lambda: (
            (" ".join(["One sentence."] * (a["num_sentences"] - 1)), " ".join(["One sentence."] * 9))
            if a.get("relation") == "less than"
            else (" ".join(["One sentence."] * (a["num_sentences"] + 1)), "One sentence.")
        ),
        "detectable_format:number_bullet_lists": lambda: (
            "\n".join(f"* point {i}" for i in range(a.get("num_bullets", 0))),
            "\n".join(f"* point {i}" for i in range(a.get("num_bullets", 0) + 1)),
        ),
        "startend:end_checker": lambda: (f"{BODY}. {a.get('end_phrase')}", f"{a.get('end_phrase')} {BODY}."),
        "startend:quotation": lambda: (f'"{BODY}."', f"{BODY}."),
        "keywords:existence": lambda: (f"{BODY}: {' and '.join(a.get('keywords', []))}.", BODY),
        "keywords:forbidden_words": lambda: (BODY, f"{BODY}, {a.get('forbidden_words', [''])[0]}."),
        "detectable_content:number_placeholders": lambda: (
            BODY + " " + " ".join(f"[slot{i}]" for i in range(a.get("num_placeholders", 0))),
            BODY,
        ),
        "detectable_format:number_highlighted_sections": lambda: (
            BODY + " " + " ".join(f"*part {i}*" for i in range(a.get("num_highlights", 0))),
            BODY,
        ),
        "length_constraints:number_paragraphs": lambda: (
            "\n***\n".join(["A paragraph."] * a.get("num_paragraphs", 0)),
            "\n***\n".join(["A paragraph."] * (a.get("num_paragraphs", 0) + 1)),
        ),
    }[kind]()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("seed", [0, 1])
def test_each_kind_is_worded_as_its_checker_checks(kind, seed):
    kwargs = KINDS[kind].draw(random.Random(seed))
    constraint = [{"id": kind, "kwargs": json.dumps(kwargs, sort_keys=True)}]
    phrase = verifiable.phrase(constraint)
    assert phrase and phrase[0].isupper() and phrase.endswith(".")
    good, bad = _follow(kind, kwargs)
    assert verifiable.check(constraint, good, "k", "prompt")["strict"] == [True], (phrase, good)
    assert verifiable.check(constraint, bad, "k", "prompt")["strict"] == [False], (phrase, bad)


def test_draws_are_seeded_per_prompt_share_sized_and_never_conflict():
    cfg = ConstraintsConfig(share=0.5, max_per_prompt=3)
    a = [verifiable.draw(cfg, 42, f"p{i}") for i in range(400)]
    assert a == [verifiable.draw(cfg, 42, f"p{i}") for i in range(400)]
    assert a != [verifiable.draw(cfg, 43, f"p{i}") for i in range(400)]
    # one prompt's draw does not depend on which others are drawn
    assert verifiable.draw(cfg, 42, "p7") == a[7]
    tagged = [d for d in a if d]
    assert 160 <= len(tagged) <= 240  # 400 * 0.5, within 4 standard deviations
    assert {len(d) for d in tagged} == {1, 2, 3}
    clash = verifiable.conflicts()
    for d in tagged:
        ids = [c["id"] for c in d]
        assert len(set(ids)) == len(ids)
        assert all(b not in clash[x] for i, x in enumerate(ids) for b in ids[i + 1 :]), ids
    assert all(a2 in clash[b2] for b2, vs in clash.items() for a2 in vs)  # symmetric
    assert verifiable.draw(ConstraintsConfig(share=0.0), 42, "p1") == []
    assert verifiable.append("Q?", []) == "Q?" and verifiable.append("Q? ", a[7] or tagged[0]).startswith(
        "Q?\n\n"
    )


def test_wilson_interval_and_paired_difference_by_hand():
    low, high = verifiable.wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert verifiable.wilson(0, 10)[0] == 0.0 and verifiable.wilson(0, 0) == (None, None)
    c = verifiable.new_counts()
    for strict in ([True, True], [True, False], [False, False], [True]):
        verifiable.add(c, strict, [True] * len(strict))
    rate = PassRate.of(c)
    assert (rate.answers, rate.passed, rate.rate, rate.loose_rate) == (4, 2, 0.5, 1.0)
    assert rate.instruction_rate == pytest.approx(4 / 7, abs=1e-4) and rate.text() == "50% [15, 85] of 4"
    pairs: dict[str, int] = {}
    for first, second in [(True, False)] * 6 + [(False, True)] * 2 + [(True, True)] * 2:
        verifiable.add_pair(pairs, first, second)
    gain = PairedGain.of(pairs)
    # d = (6 - 2) / 10; var = ((6 + 2) / 10 - d^2) / 10 = 0.064
    assert gain.difference == 0.4 and gain.lower == pytest.approx(0.4 - 1.959964 * 0.064**0.5, abs=1e-4)
    assert gain.text().startswith("+40 points [")


def test_unknown_kinds_are_refused_with_the_known_ones_named():
    with pytest.raises(ValueError, match="unknown kind 'no_commas'; choose from punctuation:no_comma"):
        ConstraintsConfig(kinds=["no_commas"])
    with pytest.raises(ValueError, match="no kinds named"):
        ConstraintsConfig(kinds=[])
