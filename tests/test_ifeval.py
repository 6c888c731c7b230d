"""IFEval: every instruction kind's checker (if-verifiable's copy of the reference's, through moaa's adapter)
on hand-made passing and failing responses, the loose variants, determinism, and the scorer against the
published GPT-4 responses: the paper's four numbers, and the per-kind counts the reference code gives."""

import json
import random
from pathlib import Path

import pytest

from moaa.benchmarks import files as BF
from moaa.benchmarks import ifeval
from moaa.core.config import ConfigError, load_config
from moaa.stages.evaluate import EvaluateConfig

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "ifeval"
INPUT = SHARED / "input_data.jsonl"
GPT4 = SHARED / "input_response_data_gpt4_20231107_145030.jsonl"
needs_ifeval = pytest.mark.skipif(not GPT4.exists(), reason="../shared/data/ifeval not present")

LONG_EN = (
    "The quick brown fox jumps over the lazy dog near the river bank while the sun sets slowly behind the "
    "distant hills and the birds sing their evening songs"
)

# kind -> (kwargs, two responses that follow it, two that do not)
CASES: dict[str, tuple[dict, list[str], list[str]]] = {
    "change_case:capital_word_frequency": (
        {"capital_frequency": 2, "capital_relation": "at least"},
        ["This is VERY IMPORTANT news.", "NASA and ESA and JAXA work together."],
        ["This is Very important news.", "Only ONE word is shouted here."],
    ),
    "change_case:english_capital": (
        {},
        [
            "I HAVE WRITTEN THIS WHOLE ANSWER IN CAPITAL LETTERS, AS YOU ASKED. IT IS ABOUT THE WEATHER.",
            "THIS IS A SHORT ANSWER WRITTEN ENTIRELY IN CAPITAL LETTERS FOR THE TEST.",
        ],
        [LONG_EN, "THIS IS ALMOST ALL CAPITALS but not quite, as the end of it shows."],
    ),
    "change_case:english_lowercase": (
        {},
        [LONG_EN.lower(), "this answer is written entirely in lowercase letters, as the instruction asks."],
        [LONG_EN, "this answer is lowercase except for One word in the middle of it."],
    ),
    "combination:repeat_prompt": (
        {"prompt_to_repeat": "Write a haiku about rain."},
        ["Write a haiku about rain. Drops fall on the roof...", "write a HAIKU about rain.\nSoft rain."],
        ["Here is a haiku about rain: drops fall.", "Write a poem about rain. Drops fall."],
    ),
    "combination:two_responses": (
        {},
        ["First answer.\n******\nSecond answer.", "Paris is nice. ****** Rome is nicer."],
        ["Only one answer here.", "Same answer.\n******\nSame answer."],
    ),
    "detectable_content:number_placeholders": (
        {"num_placeholders": 2},
        ["Dear [name], we meet at [address].", "[a] [b] [c]"],
        ["Dear [name], we meet soon.", "No placeholders at all."],
    ),
    "detectable_content:postscript": (
        {"postscript_marker": "P.S."},
        ["Thanks for reading.\nP.S. See you soon.", "Main text.\n\np.s. a lowercase one also counts."],
        ["Thanks for reading. See you soon.", "Main text.\nPS without dots."],
    ),
    "detectable_format:constrained_response": (
        {},
        ["My answer is yes.", "Let me think. My answer is maybe."],
        ["Yes.", "My answer is probably."],
    ),
    "detectable_format:json_format": (
        {},
        ['{"a": 1, "b": [1, 2]}', '```json\n{"name": "x"}\n```'],
        ["{a: 1}", 'Here is the JSON: {"a": 1}'],
    ),
    "detectable_format:multiple_sections": (
        {"section_spliter": "Section", "num_sections": 2},
        ["Section 1\nIntro.\nSection 2\nBody.", "Section 1 a\nSection 2 b\nSection 3 c"],
        ["Section 1\nOnly one section.", "Part 1\nIntro.\nPart 2\nBody."],
    ),
    "detectable_format:number_bullet_lists": (
        {"num_bullets": 2},
        ["* first\n* second", "Intro:\n- one\n- two\nOutro."],
        ["* only one", "* one\n* two\n* three"],
    ),
    "detectable_format:number_highlighted_sections": (
        {"num_highlights": 2},
        ["*First* and *second* parts.", "**Bold one** and *italic two*."],
        ["*Only one* highlighted.", "Empty ** stars and no highlight."],
    ),
    "detectable_format:title": (
        {},
        ["<<A Title>>\nThe poem.", "The poem, <<titled later>>."],
        ["A Title\nThe poem.", "<<>> an empty title."],
    ),
    "keywords:existence": (
        {"keywords": ["river", "sun"]},
        [LONG_EN, "The SUN shines on the River."],
        ["The sun shines.", "A lake and a moon."],
    ),
    "keywords:forbidden_words": (
        {"forbidden_words": ["bad", "evil"]},
        ["A good and kind answer.", "Badly written, but no forbidden word alone."],
        ["This is bad.", "Pure EVIL here."],
    ),
    "keywords:frequency": (
        {"keyword": "cat", "frequency": 3, "relation": "at least"},
        ["cat cat cat", "A cat, a Cat and a CAT."],
        ["cat cat", "A dog."],
    ),
    "keywords:letter_frequency": (
        {"letter": "z", "let_frequency": 3, "let_relation": "less than"},
        ["No such letter here.", "Zero and zebra."],
        ["Zig zag zoo.", "zzzz"],
    ),
    "language:response_language": (
        {"language": "de"},
        [
            "Das ist eine Antwort auf Deutsch, die lang genug ist, um die Sprache sicher zu erkennen.",
            "Ich habe heute Morgen Kaffee getrunken und danach die Zeitung gelesen.",
        ],
        [LONG_EN, "Ceci est une réponse en français, assez longue pour reconnaître la langue."],
    ),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
        ["First paragraph.\n\nHowever, the second.", 'One.\n\n"However" the second starts.'],
        ["First paragraph.\n\nBut the second.", "However, first.\n\nSecond."],
    ),
    "length_constraints:number_paragraphs": (
        {"num_paragraphs": 2},
        ["First paragraph.\n***\nSecond paragraph.", "One. *** Two."],
        ["Only one paragraph.", "One.\n***\nTwo.\n***\nThree."],
    ),
    "length_constraints:number_sentences": (
        {"num_sentences": 3, "relation": "less than"},
        ["One sentence. Two sentences.", "Dr. Smith went home. He slept."],
        ["One. Two. Three.", "A sentence. Another one. And a third. And a fourth."],
    ),
    "length_constraints:number_words": (
        {"num_words": 10, "relation": "at least"},
        [LONG_EN, "one two three four five six seven eight nine ten"],
        ["Too short.", "one two three four five six seven eight nine"],
    ),
    "punctuation:no_comma": (
        {},
        ["No commas here.", "Just a sentence. And another."],
        ["One, two.", "A list: a,b"],
    ),
    "startend:end_checker": (
        {"end_phrase": "Is there anything else I can help with?"},
        ["Done. Is there anything else I can help with?", 'Done. "is there anything else I can help with?"'],
        ["Is there anything else I can help with? Done.", "Done. Anything else?"],
    ),
    "startend:quotation": (
        {},
        ['"The whole answer in quotes."', '  "Quoted, with spaces around."  '],
        ["Not quoted.", '"Only the start is quoted.'],
    ),
}


def test_the_cases_cover_every_instruction_kind():
    assert sorted(CASES) == sorted(ifeval.instruction_checkers()) and len(CASES) == 25


def _row(kind: str, kwargs: dict, prompt: str = "A prompt.") -> dict:
    return {"key": 1, "prompt": prompt, "instruction_id_list": [kind], "kwargs": [kwargs]}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_kind_passes_and_fails_hand_made_responses(kind):
    kwargs, good, bad = CASES[kind]
    for response in good:
        assert ifeval.verdicts(_row(kind, kwargs), response)["strict"] == [True], (kind, response)
    for response in bad:
        v = ifeval.verdicts(_row(kind, kwargs), response)
        assert v["strict"] == [False] and v["errors"] == 0, (kind, response)


def test_loose_tries_without_the_first_or_last_line_and_without_asterisks():
    assert len(ifeval.loose_variants("a\nb\nc")) == 8
    # a chatty first line breaks the quotation; loose drops it
    v = ifeval.verdicts(_row("startend:quotation", {}), 'Sure, here it is:\n"The answer."')
    assert (v["strict"], v["loose"]) == ([False], [True])
    # markdown bold around the end phrase: loose removes the asterisks
    v = ifeval.verdicts(_row("startend:end_checker", {"end_phrase": "the end."}), "Story. **The end.**")
    assert (v["strict"], v["loose"]) == ([False], [True])
    # a blank response follows nothing, strictly or loosely (even "no comma")
    assert ifeval.verdicts(_row("punctuation:no_comma", {}), "  \n") == {
        "strict": [False],
        "loose": [False],
        "errors": 0,
    }


def test_scoring_is_deterministic_and_leaves_the_global_random_state_alone():
    # a letter outside a-z: the reference draws a random letter in its place (keys 1122 and 1129 of IFEval)
    row = _row("keywords:letter_frequency", {"letter": "!", "let_frequency": 6, "let_relation": "at least"})
    random.seed(123)
    state = random.getstate()
    first = [ifeval.verdicts(row, t)["strict"] for t in ("aaaaaa bbbbbb!", "!!!!!!", "x")]
    assert random.getstate() == state
    assert first == [ifeval.verdicts(row, t)["strict"] for t in ("aaaaaa bbbbbb!", "!!!!!!", "x")]
    lang = _row("language:response_language", {"language": "en"})
    short = ["ok", "Si.", "Hello there", "Ja, gut."]
    assert [ifeval.verdicts(lang, t)["strict"] for t in short * 3] == [
        ifeval.verdicts(lang, t)["strict"] for t in short
    ] * 3


def test_accuracies_and_bootstrap_by_hand():
    results = [([True, True], [True, True]), ([True, False], [True, True]), ([False], [False])]
    acc = ifeval.accuracies(results)
    assert acc == pytest.approx(
        {
            "prompt_level_strict_acc": 100 / 3,
            "inst_level_strict_acc": 60.0,
            "prompt_level_loose_acc": 200 / 3,
            "inst_level_loose_acc": 80.0,
        }
    )
    iv = ifeval.bootstrap_intervals(results, 200, 0.9)
    for m, (low, high) in iv.items():
        assert 0.0 <= low <= acc[m] <= high <= 100.0, m
    assert ifeval.bootstrap_intervals(results, 200, 0.9) == iv  # seeded
    assert ifeval.bootstrap_intervals(results[:1], 200, 0.9)["inst_level_loose_acc"] == (None, None)


def test_score_leaves_failed_answers_out_and_counts_kinds():
    sec = ifeval.IFEval()  # the shipped excerpt
    rows = ifeval.ifeval_inputs(ROOT / sec.input_data)
    answers = [
        {"question_id": str(r["key"]), "answers": ["A plain answer, with a comma."], "error": None}
        for r in rows
    ]
    answers[0] = {**answers[0], "answers": [], "error": "prompt too long"}
    r = ifeval.BENCHMARK.score(sec, [], answers, model="m", bootstrap=50, ci=0.9)
    assert r["judged"] == len(rows) - 1 and r["unparsed"] == 0 and "code" in r["judge"]
    d = r["details"]
    assert d["prompts"] == len(rows) - 1 and d["instructions"] == sum(len(x["kwargs"]) for x in rows[1:])
    assert sum(k["instructions"] for k in d["kinds"].values()) == d["instructions"]
    assert d["kinds"]["punctuation:no_comma"]["strict_acc"] == 0.0
    assert r["score"] == d["prompt_level_strict_acc"] and r["lower"] <= r["score"] <= r["upper"]
    none = ifeval.BENCHMARK.score(sec, [], [], model="m", bootstrap=50, ci=0.9)
    assert none["score"] is None and none["judged"] == 0 and none["note"]


def test_items_and_greedy_sampling_from_the_shipped_excerpt():
    from moaa.engine.settings import SamplingConfig

    sec = ifeval.IFEval(limit=3)
    items = ifeval.BENCHMARK.items(sec)
    assert [len(i["turns"]) for i in items] == [1, 1, 1] and items[0]["reference"] is None
    s = ifeval.BENCHMARK.answer_sampling(sec, items[0], SamplingConfig(temperature=0.7, max_tokens=64))
    assert (s.temperature, s.max_tokens) == (0.0, ifeval.IFEVAL_MAX_TOKENS)
    s = ifeval.BENCHMARK.answer_sampling(
        ifeval.IFEval(max_tokens=None), items[0], SamplingConfig(max_tokens=64)
    )
    assert (s.temperature, s.max_tokens) == (0.0, 64)


def test_the_excerpt_covers_every_instruction_kind():
    rows = ifeval.ifeval_inputs(ROOT / BF.SAMPLE_DIR / "ifeval/input_data.jsonl")
    assert len(rows) == BF.EXCERPT_IFEVAL
    assert {i for r in rows for i in r["instruction_id_list"]} == set(ifeval.instruction_checkers())


def test_a_bad_input_file_is_refused_by_key_and_line(tmp_path):
    bad = tmp_path / "input_data.jsonl"
    bad.write_text(json.dumps({"key": 1, "prompt": "x", "instruction_id_list": ["no:such"], "kwargs": [{}]}))
    cfg = load_config(EvaluateConfig, ROOT / "configs/evaluate/tiny.yaml", [f"ifeval.input_data={bad}"])
    with pytest.raises(ifeval.BenchmarkFileError, match=r"ifeval.input_data: .*line 1: unknown instruction"):
        ifeval.BENCHMARK.items(cfg.ifeval)
    with pytest.raises(ConfigError, match="ifeval"):
        load_config(EvaluateConfig, ROOT / "configs/evaluate/tiny.yaml", ["ifeval.temperature=1"])


# ---------------------------------------------------------------------- the published GPT-4 responses

# The paper's Table 3 (arXiv 2311.07911), GPT-4: the four accuracies (%).
PAPER_GPT4 = {
    "prompt_level_strict_acc": 76.89,
    "inst_level_strict_acc": 83.57,
    "prompt_level_loose_acc": 79.30,
    "inst_level_loose_acc": 85.37,
}
# Per kind on the GPT-4 file: (instructions, strict passes, loose passes). The reference code
# (lm-evaluation-harness's copy of instructions.py / utils.py, EleutherAI/lm-evaluation-harness @ 4e7e0d47f,
# run here offline on the same Punkt model) gives exactly these verdicts on all 834 instructions except the
# ones in REFERENCE_DIFFERENCES.
KIND_COUNTS = {
    "change_case:capital_word_frequency": (25, 17, 19),
    "change_case:english_capital": (25, 19, 19),
    "change_case:english_lowercase": (39, 36, 37),
    "combination:repeat_prompt": (41, 26, 26),
    "combination:two_responses": (24, 22, 24),
    "detectable_content:number_placeholders": (27, 25, 25),
    "detectable_content:postscript": (26, 26, 26),
    "detectable_format:constrained_response": (10, 8, 8),
    "detectable_format:json_format": (17, 17, 17),
    "detectable_format:multiple_sections": (14, 13, 13),
    "detectable_format:number_bullet_lists": (31, 27, 27),
    "detectable_format:number_highlighted_sections": (48, 45, 45),
    "detectable_format:title": (37, 37, 37),
    "keywords:existence": (39, 38, 38),
    "keywords:forbidden_words": (49, 42, 44),
    "keywords:frequency": (42, 38, 39),
    "keywords:letter_frequency": (33, 21, 21),
    "language:response_language": (31, 30, 30),
    "length_constraints:nth_paragraph_first_word": (12, 9, 11),
    "length_constraints:number_paragraphs": (27, 23, 23),
    "length_constraints:number_sentences": (52, 35, 35),
    "length_constraints:number_words": (52, 37, 39),
    "punctuation:no_comma": (66, 44, 48),
    "startend:end_checker": (26, 22, 22),
    "startend:quotation": (41, 41, 41),
}
# Where the verdicts differ from the reference's: 2 instructions, both keywords:letter_frequency, whose letter
# is not in a-z (key 1122: "#", key 1129: "!"). The reference then draws a random letter, separately for its
# strict and its loose pass, so its verdicts on these two vary from run to run (strict or loose False in some
# runs); here one seeded draw serves both, and both pass.
REFERENCE_DIFFERENCES = {"keywords:letter_frequency": {"count": 2, "keys": [1122, 1129]}}


def gpt4_answers() -> tuple[list[dict], list[dict]]:
    """input_data.jsonl's prompts and answer rows of the GPT-4 responses, matched to the prompt each
    answers.

    The official scorer looks a response up by its exact prompt string. The response file has the prompts in
    input_data's order; 540 of 541 match exactly. The one that does not is key 2785 (line 340): the response
    answers "at least one placeholder", a prompt edited upstream afterwards to "at least 3 placeholders"
    (google-research issues #2259, #3430). So: by prompt string, and the one left over by its position,
    checked to be key 2785 differing by that edit only; it is scored with key 2785's instructions as the
    pinned input_data.jsonl gives them (num_placeholders 3, what the edit made the prompt say)."""
    rows = ifeval.ifeval_inputs(INPUT)
    responses = ifeval.ifeval_responses(GPT4)
    assert len(rows) == len(responses) == 541
    by_prompt = {r["prompt"]: r["response"] for r in responses}
    answers, unmatched = [], []
    for i, row in enumerate(rows):
        text = by_prompt.get(row["prompt"])
        if text is None:
            unmatched.append(row["key"])
            edited = row["prompt"].replace("at least 3 placeholders", "at least one placeholder")
            assert responses[i]["prompt"] == edited, row["key"]
            text = responses[i]["response"]
        answers.append({"question_id": str(row["key"]), "answers": [text], "error": None})
    assert unmatched == [2785]
    return rows, answers


@needs_ifeval
def test_the_published_gpt4_responses_reproduce_the_papers_numbers():
    rows, answers = gpt4_answers()
    sec = ifeval.IFEval(input_data=str(INPUT), limit=None)
    first = ifeval.BENCHMARK.score(sec, [], answers, model="gpt-4", bootstrap=100, ci=0.9)
    again = ifeval.BENCHMARK.score(sec, [], list(reversed(answers)), model="gpt-4", bootstrap=100, ci=0.9)
    assert first == again  # deterministic (langdetect and the reference's random draws seeded)
    d = first["details"]
    print({m: round(d[m], 2) for m in ifeval.METRICS})
    for m, published in PAPER_GPT4.items():
        assert abs(d[m] - published) <= 0.5, (m, d[m], published)
    assert first["score"] == d["prompt_level_strict_acc"] and first["judged"] == 541
    assert d["instructions"] == 834 and d["checker_errors"] == 0
    got = {
        k: (
            v["instructions"],
            round(v["strict_acc"] * v["instructions"] / 100),
            round(v["loose_acc"] * v["instructions"] / 100),
        )
        for k, v in d["kinds"].items()
    }
    assert got == KIND_COUNTS
    assert sum(x["count"] for x in REFERENCE_DIFFERENCES.values()) == 2
    odd = [
        r["key"]
        for r in rows
        for iid, kw in zip(r["instruction_id_list"], r["kwargs"])
        if iid == "keywords:letter_frequency" and not ("a" <= kw["letter"].lower() <= "z")
    ]
    assert odd == REFERENCE_DIFFERENCES["keywords:letter_frequency"]["keys"]
