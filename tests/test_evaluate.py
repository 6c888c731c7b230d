"""evaluate: the row functions (prompts, parsing, sampling, scoring) on hand-made rows (fast), and real Ray +
vLLM runs of the tiny models on slices of the real benchmark files in ../shared/data (slow): two models end
to end with one judge, and the MoA judge."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from moaa.benchmarks import alpaca_eval, arena_hard, ifeval, mt_bench, registry
from moaa.core import schemas
from moaa.core.config import ConfigError, load_config
from moaa.engine.settings import Completion, SamplingConfig
from moaa.stages import evaluate
from moaa.stages.evaluate import EvaluateConfig

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
TINY = ROOT / "configs/evaluate/tiny.yaml"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")
# The benchmark files as ../shared/data holds them (the same files `moaa fetch-benchmarks` gets).
SHARED_FILES = [
    f"mt_bench.questions={SHARED}/mt_bench/question.jsonl",
    f"mt_bench.references={SHARED}/mt_bench/reference_answer_gpt-4.jsonl",
    f"arena_hard.questions={SHARED}/arena_hard/question.jsonl",
    f"arena_hard.baseline_answers={SHARED}/arena_hard/model_answer_gpt-4-0314.jsonl",
    f"alpaca_eval.reference_outputs={SHARED}/alpaca_eval/gpt4_1106_preview.model_outputs.json",
    f"ifeval.input_data={SHARED}/ifeval/input_data.jsonl",
]


def _state(benchmark: str, turns: list[str], answers: list[str], reference=None, category="writing", **kw):
    item = {
        "question_id": "q1",
        "category": category,
        "turns": turns,
        "reference": reference,
        "switched": kw.pop("switched", False),
    }
    s = evaluate.init_state(item, benchmark, "m1", "shard")
    s["answers"] = list(answers)
    return s


# ------------------------------------------------------------------------------------------ prompts


def test_mt_bench_second_turn_is_asked_on_the_models_own_first_answer():
    s = _state("mt_bench", ["Q1?", "Q2?"], ["my first answer"])
    assert evaluate.build_answer(s, model="m1", turn=1) is None  # turn 1 is answered already
    assert evaluate.build_answer(s, model="other", turn=2) is None  # another model's row
    assert evaluate.build_answer(s, model="m1", turn=2) == [
        {"role": "user", "content": "Q1?"},
        {"role": "assistant", "content": "my first answer"},
        {"role": "user", "content": "Q2?"},
    ]
    s["answers"].append("my second answer")
    system, user = evaluate.judge_messages(s, 2, 0)
    assert system["content"] == mt_bench.MT_BENCH_SINGLE_V1_MULTI_TURN["system"]
    assert "### Assistant A:\nmy first answer" in user["content"]
    assert "### Assistant A:\nmy second answer" in user["content"]
    # a math question is graded against the reference answers (FastChat's single-math-v1 prompts)
    m = _state("mt_bench", ["1+1?", "2+2?"], ["2", "5"], reference=["R1", "R2"], category="math")
    assert "[The Start of Reference Answer]\nR1" in evaluate.judge_messages(m, 1, 0)[1]["content"]
    turn2 = evaluate.judge_messages(m, 2, 0)
    assert turn2[0]["content"] == mt_bench.MT_BENCH_SINGLE_MATH_V1_MULTI_TURN["system"]
    assert "### Reference answer:\nR2" in turn2[1]["content"]


def test_arena_games_swap_the_answers_and_alpaca_order_is_seeded():
    s = _state("arena_hard", ["P"], ["MODEL"], reference=["BASE"])
    g1, g2 = (evaluate.judge_messages(s, 1, g)[1]["content"] for g in (1, 2))
    assert g1.index("BASE") < g1.index("MODEL") and g2.index("MODEL") < g2.index("BASE")
    assert evaluate.judge_keys(s) == [(1, 1), (1, 2)]
    assert [arena_hard.BENCHMARK.shown_first(s, g) for g in (1, 2)] == ["reference", "model"]

    assert [m["role"] for m in alpaca_eval.ALPACA_MESSAGES] == ["system", "user"]
    a = _state("alpaca_eval", ["Do {this}"], ["MODEL"], reference=["REF"], switched=True)
    user = evaluate.judge_messages(a, 1, 0)[1]["content"]
    assert '"instruction": """Do {this}"""' in user
    assert user.index('"m",\n        "output": """MODEL"""') < user.index('"output": """REF"""')
    assert "{output_1}" not in user and user.endswith("## Best Model Identifier")
    flips = [alpaca_eval.alpaca_switched(f"instruction {i}", 0) for i in range(200)]
    assert 70 < sum(flips) < 130  # about half the rows show the model first
    assert flips == [alpaca_eval.alpaca_switched(f"instruction {i}", 0) for i in range(200)]


def test_an_arena_judgment_without_a_label_is_sent_back_once_as_in_v01():
    s = _state("arena_hard", ["P"], ["MODEL"], reference=["BASE"])
    kw = {"benchmark": "arena_hard", "who": "j", "role": "judge", "judges": ["j"]}
    first = ["A is longer, B is right.", "Both fine. [[A=B]]"]  # game 1 without a label, game 2 with one
    done = [Completion(texts=[t], prompt_tokens=100, completion_tokens=[10]) for t in first]
    evaluate.apply_judge(s, done, [], **kw)
    (conv,) = evaluate.build_continuation(s, **kw)  # game 1 only
    assert conv[:-2] == evaluate.judge_messages(s, 1, 1)
    assert conv[-2:] == [
        {"role": "assistant", "content": "A is longer, B is right."},
        {"role": "user", "content": arena_hard.ARENA_HARD_CONTINUE},
    ]
    evaluate.apply_continuation(
        s, [Completion(texts=["So: [[B>A]]"], prompt_tokens=130, completion_tokens=[4])], [conv], **kw
    )
    g1, g2 = s["judgments"]
    assert g1["verdict"] == "B>A" and g1["raw"] == "A is longer, B is right.\nSo: [[B>A]]"
    assert (g1["attempts"], g1["prompt_tokens"], g1["completion_tokens"]) == (2, 230, 14)
    assert (g2["attempts"], g2["verdict"]) == (1, "A=B")
    assert evaluate.build_continuation(s, **kw) == []  # once only
    assert evaluate.build_continuation(_state("mt_bench", ["Q"], ["A"]), **kw) is None
    # two different labels are inconsistent, not missing: not sent back (v0.1's get_score)
    t = _state("arena_hard", ["P"], ["MODEL"], reference=["BASE"])
    evaluate.apply_judge(
        t, [Completion(texts=["[[A>B]] or [[B>A]]"]), Completion(texts=["x"], error="too long")], [], **kw
    )
    assert evaluate.build_continuation(t, **kw) == [] and t["judgments"][0]["verdict"] is None


def test_constrained_formats_always_parse():
    cases = {
        "mt_bench": ("Helpful and correct. Rating: [[7]]", "7"),
        "arena_hard": ("B is more complete. My final verdict is: [[B>A]]", "B>A"),
    }
    for bench, (text, verdict) in cases.items():
        structured, max_tokens = registry.get(bench).judge_format(64)
        assert re.fullmatch(structured["regex"], text) and max_tokens >= 64
        assert not re.fullmatch(structured["regex"], "[[x]] " + text)  # brackets only in the verdict
        assert registry.get(bench).parse(Completion(texts=[text]), False)[0] == verdict
    assert alpaca_eval.BENCHMARK.judge_format(64) == ({"choice": ["m", "M"]}, 1)


def test_alpaca_preference_from_logprobs_or_the_choice_with_the_order_undone():
    lp = {"m": math.log(0.8), "M": math.log(0.2), "x": -1.0}
    assert alpaca_eval.BENCHMARK.parse(Completion(texts=["m"], first_logprobs=lp), False)[1:] == (
        pytest.approx(1.2),
        "logprobs",
    )
    assert alpaca_eval.BENCHMARK.parse(Completion(texts=["m"], first_logprobs=lp), True)[1] == (
        pytest.approx(1.8)
    )
    # neither letter among the logprobs: the choice itself; "M" is output_2, the model unless switched
    no = {"x": -0.1}
    assert alpaca_eval.BENCHMARK.parse(Completion(texts=["M"], first_logprobs=no), False) == (
        "M",
        2.0,
        "choice",
    )
    assert alpaca_eval.BENCHMARK.parse(Completion(texts=["M"]), True)[1] == 1.0
    assert alpaca_eval.BENCHMARK.parse(Completion(texts=["maybe"]), False) == (None, None, None)


def test_answer_sampling_follows_fastchat_per_category_and_arena_hard():
    base = SamplingConfig(temperature=0.9, max_tokens=50)
    sections = {
        "mt_bench": mt_bench.MTBench(max_tokens=7, category_temperature=True),
        "arena_hard": arena_hard.ArenaHard(max_tokens=None, temperature=0.0),
        "alpaca_eval": alpaca_eval.AlpacaEval(max_tokens=None),
    }
    got = {
        (b, c): evaluate.answer_sampling(_state(b, ["q"], [], category=c), base=base, sections=sections)
        for b, c in [
            ("mt_bench", "writing"),
            ("mt_bench", "math"),
            ("mt_bench", "stem"),
            ("arena_hard", "x"),
            ("alpaca_eval", "x"),
        ]
    }
    assert [(s.temperature, s.max_tokens) for s in got.values()] == [
        (0.7, 7),
        (0.0, 7),
        (0.1, 7),
        (0.0, 50),
        (0.9, 50),
    ]


# ------------------------------------------------------------------------------------------ scoring


def _final(bench, game, verdict, score=None, first=None, qid="q1", turn=1):
    return {
        "model": "m1",
        "benchmark": bench,
        "question_id": qid,
        "turn": turn,
        "game": game,
        "verdict": verdict,
        "score": score,
        "score_from": "text",
        "shown_first": first,
        "final": True,
        "error": None,
        "role": "judge",
        "judge": "j",
        "prompt_tokens": 10,
        "completion_tokens": 2,
    }


def test_arena_position_stats_and_score_by_hand():
    finals = [
        _final("arena_hard", 1, "A>B", first="reference", qid="q1"),  # baseline wins
        _final("arena_hard", 2, "A>>B", first="model", qid="q1"),  # model wins, strongly: 3 battles
        _final("arena_hard", 1, "B>A", first="reference", qid="q2"),  # model wins
        _final("arena_hard", 2, "A>B", first="model", qid="q2"),  # model wins
    ]
    stats = arena_hard.BENCHMARK.position_stats(finals)
    assert stats == {"first_position_rate": 0.75, "position_consistency": 0.5}
    r = arena_hard.BENCHMARK.score(arena_hard.ArenaHard(), finals, [], model="m1", bootstrap=20, ci=0.9)
    # 6 battles (1 + 3 + 1 + 1), the model wins 5: the fit is the plain weighted mean
    assert r["details"]["battles"] == 6 and r["score"] == pytest.approx(100 * 5 / 6, abs=1e-6)
    assert r["lower"] <= r["score"] <= r["upper"] and r["judged"] == 4 and r["unparsed"] == 0


def test_mt_bench_and_alpaca_scores_by_hand():
    finals = [
        _final("mt_bench", 0, "8", 8.0, turn=1),
        _final("mt_bench", 0, "6", 6.0, turn=2),
        _final("mt_bench", 0, None, None, turn=2, qid="q2"),
    ]
    r = mt_bench.BENCHMARK.score(mt_bench.MTBench(), finals, [], model="m1", bootstrap=50, ci=0.9)
    assert (r["score"], r["judged"], r["unparsed"]) == (7.0, 2, 1)
    assert r["details"] == {"turn_1": 8.0, "turn_2": 6.0} and 6.0 <= r["lower"] <= r["upper"] <= 8.0
    prefs = [2.0, 1.0, 1.5, 1.8]
    finals = [_final("alpaca_eval", 0, None, p, first="reference", qid=f"q{i}") for i, p in enumerate(prefs)]
    r = alpaca_eval.BENCHMARK.score(alpaca_eval.AlpacaEval(), finals, [], model="m1", bootstrap=100, ci=0.9)
    assert r["score"] == pytest.approx(57.5) and r["standard_error"] > 0
    assert r["lc_win_rate"] is None and r["note"] == alpaca_eval.LC_NOT_COMPUTED
    # the model (shown second here) won 2 of the 3 decisive comparisons
    assert alpaca_eval.BENCHMARK.position_stats(finals)["first_position_rate"] == pytest.approx(1 / 3)


def test_results_have_a_row_per_model_and_benchmark_even_without_judgments(tmp_path):
    cfg = load_config(EvaluateConfig, TINY, [f"runs_dir={tmp_path}"])
    rows = evaluate.results_rows(cfg, [], [])
    assert [(r["model"], r["benchmark"]) for r in rows] == [
        (m, b) for m in ("tiny-qwen2-a", "train_dpo-r1") for b in registry.NAMES
    ]
    assert all(r["score"] is None for r in rows)
    # the judge's caveat only on the rows a judge scored: IFEval's are checked by code
    assert [
        ("noise" in (r["note"] or ""), r["judge"]) for r in rows if not registry.get(r["benchmark"]).judged
    ] == [(False, "none: checked by code (IFEval's checkers)")] * 2
    assert all("noise" in r["note"] for r in rows if registry.get(r["benchmark"]).judged)
    schemas.to_table(
        [{**r, "run_id": "x", "config_hash": "h", "moaa_version": "v"} for r in rows], "eval_results"
    )


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "override, message",
    [
        (
            ["judge.judges=[{model: models/tiny/tiny-qwen2-a}, {model: models/tiny/tiny-llama-b}]"],
            "aggregator",
        ),
        (["mt_bench=null", "arena_hard=null", "alpaca_eval=null", "ifeval=null"], "every benchmark is null"),
        (["models.1.name=tiny-qwen2-a"], "distinct display names"),
        (["models.1.name=gpt-4-0314"], "baseline"),
        (["ci=1.5"], "ci"),
    ],
)
def test_bad_configs_are_refused_by_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(EvaluateConfig, TINY, override)


@needs_shared
def test_a_missing_benchmark_file_names_the_key_and_the_fix_before_ray(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.evaluate",
            "--config",
            str(TINY),
            f"runs_dir={tmp_path}",
            *SHARED_FILES,
            f"arena_hard.questions={tmp_path}/nope.jsonl",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "arena_hard.questions" in r.stderr and "moaa fetch-benchmarks" in r.stderr
    assert not (tmp_path / "demo").exists()  # nothing written, no engine started


@pytest.mark.parametrize("job", ["evaluate", "pipeline"])
def test_a_missing_full_benchmark_file_is_one_line_with_the_fetch_command_before_any_engine(tmp_path, job):
    """A config that names the published files (as the paper configs do) where they have not been fetched:
    one line naming the key, the file and the exact command that fetches it; the pipeline checks this before
    its first stage, not after hours of generation and training."""
    full = tmp_path / "data" / "benchmarks"
    key = "arena_hard.questions" if job == "evaluate" else "evaluate.arena_hard.questions"
    config = TINY if job == "evaluate" else ROOT / "configs" / "pipeline" / "tiny.yaml"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            f"jobs.{job}",
            "--config",
            str(config),
            f"runs_dir={tmp_path / 'runs'}",
            f"{key}={full}/arena_hard/question.jsonl",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"`moaa fetch-benchmarks {full}`" in lines[0] and "arena_hard.questions" in lines[0], lines[0]
    assert f"{full}/arena_hard/question.jsonl not found" in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing written: no stage ran, no engine or Ray started


@pytest.mark.parametrize(
    ("key", "value", "asked"),
    [("mt_bench.per_category", "3", "3 asked"), ("arena_hard.limit", "null", "all of them")],
)
def test_asking_the_shipped_excerpt_for_more_than_it_holds_says_how_to_get_the_full_files(
    tmp_path, key, value, asked
):
    cfg = load_config(EvaluateConfig, TINY, [f"runs_dir={tmp_path}", f"{key}={value}"])
    bench = key.split(".")[0]
    with pytest.raises(evaluate.BenchmarkFileError, match=asked) as e:
        evaluate.plan(cfg)
    assert "shipped excerpt" in str(e.value) and "moaa fetch-benchmarks" in str(e.value)
    assert f"{bench}." in str(e.value) and "data/benchmarks/" in str(e.value)


@needs_shared
def test_a_benchmark_file_in_another_layout_is_refused_with_its_line(tmp_path):
    bad = tmp_path / "question.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "category": "x", "turns": ["only one"]}) + "\n")
    cfg = load_config(
        EvaluateConfig, TINY, [f"runs_dir={tmp_path}", *SHARED_FILES, f"mt_bench.questions={bad}"]
    )
    with pytest.raises(evaluate.BenchmarkFileError, match=r"mt_bench.questions: .*line 1"):
        evaluate.plan(cfg)


# ------------------------------------------------------------------------------------ real engines


def _tiny(tiny_models: Path, out: Path, *extra: str) -> EvaluateConfig:
    return load_config(
        EvaluateConfig,
        TINY,
        [
            f"output_dir={out}",
            f"models.0.model={tiny_models}/tiny-qwen2-a",
            f"models.1.model={tiny_models}/tiny-llama-b",
            f"judge.judges.0.model={tiny_models}/tiny-qwen2-c",
            *SHARED_FILES,
            *extra,
        ],
    )


@pytest.mark.slow
@needs_shared
def test_two_models_end_to_end_on_the_real_benchmark_files(tmp_path, tiny_models, engines):
    out = tmp_path / "eval"
    cfg = _tiny(tiny_models, out)
    summary = evaluate.run(cfg, pools=engines.get(cfg.engine_models()))
    print(evaluate.one_line(summary))
    # every model x benchmark has its results row, in Parquet and JSON alike
    results = pq.read_table(out / "results.parquet").to_pylist()
    assert [(r["model"], r["benchmark"]) for r in results] == [
        (m, b) for m in ("tiny-qwen2-a", "tiny-llama-b") for b in registry.NAMES
    ]
    assert json.loads((out / "results.json").read_text()) == [
        {k: v for k, v in r.items() if k not in ("run_id", "config_hash", "moaa_version")} for r in results
    ]
    by = {(r["model"], r["benchmark"]): r for r in results}
    for (_, bench), r in by.items():
        assert r["questions"] == {"mt_bench": 8, "arena_hard": 2, "alpaca_eval": 3, "ifeval": 3}[bench]
        assert r["answer_errors"] == 0 and r["judged"] > 0 and r["answer_tokens"] > 0
        if registry.get(bench).judged:
            assert r["parse_rate"] == 1.0 and r["judge_tokens"] > 0  # constrained judge
        else:  # IFEval: checked by code, no judge step
            assert r["parse_rate"] is None and r["judge_tokens"] == 0 and r["note"] is None
            assert pq.read_table(out / "judgments" / bench).num_rows == 0
    _check_ifeval(out, by)
    assert all(
        by[(m, "arena_hard")]["position_consistency"] is not None for m in ("tiny-qwen2-a", "tiny-llama-b")
    )
    assert all(
        by[(m, "mt_bench")]["judged"] + by[(m, "mt_bench")]["judge_errors"] == 16 for m in ("tiny-qwen2-a",)
    )
    # answers and judgments: one file per shard, each in its schema
    answers = pq.read_table(out / "answers/mt_bench/tiny-qwen2-a").to_pylist()
    schemas.validate(
        pq.read_schema(next((out / "answers/mt_bench/tiny-qwen2-a").glob("*.parquet"))), "eval_answers"
    )
    assert len(answers) == 8 and all(len(a["answers"]) == 2 for a in answers)
    # the second turn was asked on the model's own first answer
    for a in answers:
        assert a["messages"][1] == {"role": "assistant", "content": a["answers"][0]}
        assert a["prompt_tokens"][1] > a["prompt_tokens"][0]
    judgments = pq.read_table(out / "judgments/arena_hard/tiny-llama-b").to_pylist()
    assert sorted((j["question_id"], j["game"]) for j in judgments) == sorted(
        (q, g) for q in {j["question_id"] for j in judgments} for g in (1, 2)
    )
    assert all(j["final"] and j["verdict"] in arena_hard.ARENA_LABELS for j in judgments)
    alpaca = pq.read_table(out / "judgments/alpaca_eval/tiny-qwen2-a").to_pylist()
    assert all(j["error"] or 1.0 <= j["score"] <= 2.0 for j in alpaca)
    # a rerun of the finished stage returns its summary and writes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert evaluate.run(cfg) == summary
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def _check_ifeval(out: Path, by: dict) -> None:
    """IFEval's rows: every prompt answered, greedily with its max_tokens, and the reported accuracies
    recounted from the answers Parquet with the checkers equal the results row's."""
    inputs = {str(r["key"]): r for r in ifeval.ifeval_inputs(SHARED / "ifeval/input_data.jsonl")}
    for m in ("tiny-qwen2-a", "tiny-llama-b"):
        folder = out / "answers/ifeval" / m
        schemas.validate(pq.read_schema(next(folder.glob("*.parquet"))), "eval_answers")
        answers = pq.read_table(folder).to_pylist()
        assert sorted(a["question_id"] for a in answers) == sorted(list(inputs)[:3])
        assert all(a["error"] is None and len(a["answers"]) == 1 for a in answers)
        assert all(0 < a["completion_tokens"][0] <= 16 for a in answers)  # the models' own 16 tokens
        v = [ifeval.verdicts(inputs[a["question_id"]], a["answers"][0]) for a in answers]
        recount = ifeval.accuracies([(x["strict"], x["loose"]) for x in v])
        r = by[(m, "ifeval")]
        d = json.loads(r["details"])
        assert (
            r["metric"] == "ifeval_prompt_level_strict_acc"
            and r["score"] == recount["prompt_level_strict_acc"]
        )
        assert {k: d[k] for k in ifeval.METRICS} == recount
        assert all(0.0 <= d[k] <= 100.0 for k in ifeval.METRICS) and r["lower"] <= r["score"] <= r["upper"]
        assert d["prompts"] == 3 and d["instructions"] == sum(
            len(inputs[a["question_id"]]["kwargs"]) for a in answers
        )
        assert r["judge"].startswith("none") and r["judged"] == 3 and r["unparsed"] == 0


def _engine(path: Path, name: str, **sampling) -> str:
    """A tiny engine's settings as a YAML flow mapping, for an override."""
    return (
        f"{{model: {path}, name: {name}, dtype: float32, enforce_eager: true, max_model_len: 4096, "
        f"kv_cache_space_gb: 1, num_cpus: 0.4, sampling: {json.dumps(sampling)}}}"
    )


@pytest.mark.slow
@needs_shared
def test_the_moa_judge_evaluates_like_a_single_judge(tmp_path, tiny_models, engines):
    out = tmp_path / "moa"
    a, b, c = (tiny_models / n for n in ("tiny-qwen2-a", "tiny-llama-b", "tiny-qwen2-c"))
    cfg = _tiny(
        tiny_models,
        out,
        f"models=[{_engine(a, 'tiny-qwen2-a', max_tokens=8)}]",
        "mt_bench=null",
        "ifeval=null",
        "arena_hard.limit=1",
        "alpaca_eval.limit=1",
        f"judge.judges=[{_engine(c, 'tiny-qwen2-c', temperature=1.0)}, {_engine(b, 'j2', temperature=1.0)}]",
        f"judge.aggregator={_engine(a, 'agg', temperature=1.0)}",
    )
    summary = evaluate.run(cfg, pools=engines.get(cfg.engine_models()))
    results = summary.metrics["results"]
    assert [(r["benchmark"], r["judge"]) for r in results] == [
        (b, "MoA judge (tiny-qwen2-c, j2 -> agg)") for b in ("arena_hard", "alpaca_eval")
    ]
    judgments = pq.read_table(out / "judgments/arena_hard/tiny-qwen2-a").to_pylist()
    # per game: both judges, then the aggregator, whose verdict is the final one
    for game in (1, 2):
        calls = [(j["judge"], j["role"], j["final"]) for j in judgments if j["game"] == game]
        assert calls == [
            ("tiny-qwen2-c", "judge", False),
            ("j2", "judge", False),
            ("agg", "aggregator", True),
        ]
    assert results[0]["judged"] == 2 and results[0]["parse_rate"] == 1.0
    assert set(summary.tokens) == {"answer/tiny-qwen2-a", "judge/tiny-qwen2-c", "judge/j2", "aggregate/agg"}


@pytest.mark.slow
@needs_shared
def test_an_unconstrained_arena_judge_without_a_label_is_asked_to_continue(tmp_path, tiny_models, engines):
    out = tmp_path / "free"
    a, c = tiny_models / "tiny-qwen2-a", tiny_models / "tiny-qwen2-c"
    cfg = _tiny(
        tiny_models,
        out,
        f"models=[{_engine(a, 'tiny-qwen2-a', max_tokens=8)}]",
        "mt_bench=null",
        "alpaca_eval=null",
        "ifeval=null",
        "arena_hard.limit=1",
        "judge.constrained=false",
        f"judge.judges=[{_engine(c, 'tiny-qwen2-c', temperature=1.0, max_tokens=12)}]",
    )
    summary = evaluate.run(cfg, pools=engines.get(cfg.engine_models()))
    judgments = pq.read_table(out / "judgments/arena_hard/tiny-qwen2-a").to_pylist()
    assert len(judgments) == 2
    # a random model's free text almost never holds a [[label]]: each game went back for a second reply
    assert [j["attempts"] for j in judgments] == [2, 2], [j["raw"] for j in judgments]
    assert all(
        j["error"] is None and j["verdict"] == arena_hard.parse_arena_verdict(j["raw"]) for j in judgments
    )
    assert summary.tokens["judge/tiny-qwen2-c"].calls == 4  # 2 games x (first reply + continuation)
    (row,) = summary.metrics["results"]
    assert row["judged"] + row["unparsed"] == 2 and row["judge_errors"] == 0


@needs_shared
def test_alpaca_lc_is_computed_when_its_glm_data_is_configured(tmp_path):
    import csv

    n = 8
    outs = alpaca_eval.alpaca_eval_outputs(SHARED / "alpaca_eval/gpt4_1106_preview.model_outputs.json")[:n]
    # a df_gamed.csv in alpaca_eval's layout for these n instructions (the real one is on the HF Hub)
    gamed = tmp_path / "df_gamed.csv"
    with open(gamed, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "index", *alpaca_eval.LC_FILE_COLUMNS[2:]])
        w.writeheader()
        for model, sign in (("gpt4_1106_preview_verbose", -1), ("gpt4_1106_preview_concise", 1)):
            for i in range(n):
                w.writerow(
                    {
                        "model": model,
                        "index": i,
                        "preference": 0.3 + 0.05 * i,
                        "std_delta_len": sign * (0.5 + 0.1 * i),
                        "instruction_difficulty": (-1.0, 0.5)[i % 2],
                        "not_gamed_baseline": False,
                    }
                )
    answers = [
        {
            "question_id": f"{i:04d}",
            "turns": [o["instruction"]],
            "reference": [o["output"]],
            "answers": ["x" * (50 + 40 * i)],
        }
        for i, o in enumerate(outs)
    ]
    finals = [
        _final("alpaca_eval", 0, None, 1.0 + (0.2 + 0.08 * i), first="reference", qid=f"{i:04d}")
        for i in range(n)
    ]
    cfg = alpaca_eval.AlpacaEval(
        reference_outputs=str(SHARED / "alpaca_eval/gpt4_1106_preview.model_outputs.json"),
        limit=n,
        lc_data=str(gamed),
    )
    r = alpaca_eval.BENCHMARK.score(cfg, finals, answers, model="m1", bootstrap=100, ci=0.9)
    assert 0 < r["lc_win_rate"] < 100 and r["lc_win_rate"] != pytest.approx(r["score"])
    assert "first 8 instructions" in r["note"] and r["details"]["lc_standard_error"] >= 0
    # rows matched to other instructions than the file's are refused, not misread
    answers[0]["turns"] = ["another instruction"]
    with pytest.raises(evaluate.BenchmarkFileError, match="alpaca_eval.lc_data"):
        alpaca_eval.BENCHMARK.score(cfg, finals, answers, model="m1", bootstrap=100, ci=0.9)
