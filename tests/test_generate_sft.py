"""generate_sft on the real engine: real Ray Data, real vLLM (CPU build), tiny local models.

One run is killed mid-way (after turn 1 of a multi-turn shard) and resumed; its output is then checked
end to end. A 3-layer run checks that middle layers see the previous layer's answers."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from moaa.benchmarks import verifiable
from moaa.core import schemas, storage
from moaa.core.config import load_config
from moaa.core.manifests import ResumeError
from moaa.judging import moa
from moaa.judging.prompts import AGGREGATE_AND_SYNTHESIZE
from moaa.stages import generate_sft
from moaa.stages.generate_sft import GenerateSFTConfig

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs/generate_sft/tiny.yaml"
pytestmark = pytest.mark.slow

SINGLE = [f"Name {i} fruits that are red." for i in range(1, 7)]
CHATS = {
    "chat2": ["What is a prime number?", "Is 91 one of them?"],
    "chat3": ["Suggest a name for a cat.", "Something shorter?", "And for a dog?"],
}
LONG = "Please summarize this text. " + "lorem ipsum dolor sit amet " * 120  # > 2048 byte tokens


# Verifiable instructions on some rows (prepare's constraints column): a short word limit that tiny models'
# answers meet, no commas and lowercase, which some of their random texts break.
FEW_WORDS = {"id": "length_constraints:number_words", "kwargs": '{"num_words": 500, "relation": "less than"}'}
CONSTRAINTS = {
    "single0": [{"id": "punctuation:no_comma", "kwargs": "{}"}],
    "single1": [{"id": "change_case:english_lowercase", "kwargs": "{}"}, FEW_WORDS],
    "single2": [FEW_WORDS],
    "chat2": [{"id": "punctuation:no_comma", "kwargs": "{}"}],
}


def _row(pid, turns, originals=True):
    msgs = []
    for u in turns:
        msgs.append({"role": "user", "content": u})
        if originals:
            msgs.append({"role": "assistant", "content": f"ORIGINAL ANSWER to {u}"})
    return {
        "prompt_id": pid,
        "source": "test",
        "messages": msgs,
        "n_turns": len(turns),
        "constraints": CONSTRAINTS.get(pid, []),
    }


@pytest.fixture(scope="module")
def prompts_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prompts")
    single = [_row(f"single{i}", [q], originals=False) for i, q in enumerate(SINGLE)]
    storage.write_parquet(schemas.to_table(single, "prompts"), str(d / "part-00000.parquet"))
    multi = [_row(k, v) for k, v in CHATS.items()] + [_row("long", [LONG], originals=False)]
    storage.write_parquet(schemas.to_table(multi, "prompts"), str(d / "part-00001.parquet"))
    return d


def _overrides(tiny_models: Path, prompts_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"proposers.0.model={tiny_models}/tiny-qwen2-a",
        f"proposers.1.model={tiny_models}/tiny-llama-b",
        f"aggregator.model={tiny_models}/tiny-qwen2-c",
        f"input_dir={prompts_dir}",
        f"output_dir={out}",
        "keep_prompts=true",
        "run_id=test",
        *extra,
    ]


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory, tiny_models, prompts_dir, engines):
    """Start the job as a user would, kill it once turn 1 of the multi-turn shard is saved, rerun."""
    out = tmp_path_factory.mktemp("gen") / "out"
    args = _overrides(tiny_models, prompts_dir, out)
    marker = out / "work" / "turn-1" / "part-00001.parquet"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.generate_sft", "--config", str(TINY), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 400

    def single_turn_shard_committed() -> bool:
        try:
            return "part-00000.parquet" in json.loads((out / "manifest.json").read_text())["shards"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return False

    # Turn 1 of both shards runs in one pass: the single-turn shard's commit and the chats' turn-1 save come
    # in either order, so the kill waits for both (turn 2 then takes seconds more).
    while (
        not (marker.exists() and single_turn_shard_committed())
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, mid-run
    proc.wait()
    assert marker.exists(), "the first run never finished turn 1"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running" and list(manifest["shards"]) == ["part-00000.parquet"]
    first_shard_mtime = (out / "data" / "part-00000.parquet").stat().st_mtime_ns

    cfg = load_config(GenerateSFTConfig, TINY, args)
    summary = generate_sft.run(cfg, pools=engines.get(cfg.engine_models()))
    return {"out": out, "summary": summary, "cfg": cfg, "first_shard_mtime": first_shard_mtime}


def _rows(out: Path) -> list[dict]:
    return pq.read_table(out / "data").to_pylist()


def test_resume_after_kill_skips_finished_shards_and_loses_nothing(killed_then_resumed):
    out, summary = killed_then_resumed["out"], killed_then_resumed["summary"]
    assert summary.metrics["shards"] == 2 and summary.metrics["shards_this_run"] == 1
    assert (out / "data" / "part-00000.parquet").stat().st_mtime_ns == killed_then_resumed[
        "first_shard_mtime"
    ]
    ids = [r["prompt_id"] for r in _rows(out)]
    assert sorted(ids) == sorted([f"single{i}" for i in range(6)] + ["chat2", "chat3", "long"])
    assert not (out / "work").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["resumed"] == 1


def test_every_row_has_the_moa_answer_and_every_proposal(killed_then_resumed):
    for row in _rows(killed_then_resumed["out"]):
        if row["error"]:
            continue
        n = row["n_turns"]
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * n
        assert len(row["proposals"]) == 3 * n
        for turn in range(1, n + 1):
            props = [p for p in row["proposals"] if p["turn"] == turn]
            assert [(p["layer"], p["model"]) for p in props] == [
                (1, "tiny-qwen2-a"),
                (1, "tiny-llama-b"),
                (2, "tiny-qwen2-c"),
            ]
            # the turn's assistant message is the aggregator's answer
            assert row["messages"][2 * turn - 1]["content"] == props[2]["content"]
            for p in props:
                assert p["completion_tokens"] > 0 and p["prompt_tokens"] > 0
                assert p["finish_reason"] in {"stop", "length"}
        assert row["aggregator_model"] == "tiny-qwen2-c" and row["run_id"] == "test"


def test_instructions_are_checked_and_the_pass_rates_match_a_recount(killed_then_resumed):
    """Every answer to a row's last turn carries IFEval's verdicts on that row's instructions; the summary's
    pass rates (summed over the killed run's shard and the resumed one) equal a recount from the Parquet."""
    rows, checks = _rows(killed_then_resumed["out"]), killed_then_resumed["summary"].metrics["checks"]
    tagged = [r for r in rows if r["constraints"]]
    assert sorted(r["prompt_id"] for r in tagged) == sorted(CONSTRAINTS) and checks["prompts"] == 4
    counts: dict[str, list[int]] = {}
    for r in rows:
        for p in r["proposals"]:
            if not r["constraints"] or p["turn"] != r["n_turns"]:
                assert p["follows"] == [] and p["follows_loose"] == []
                continue
            user = [m["content"] for m in r["messages"] if m["role"] == "user"][-1]
            again = verifiable.check(r["constraints"], p["content"], r["prompt_id"], user)
            assert p["follows"] == again["strict"] and p["follows_loose"] == again["loose"]
            assert len(p["follows"]) == len(r["constraints"])
            c = counts.setdefault(f"layer{p['layer']}/{p['model']}", [0, 0])
            c[0] += 1
            c[1] += all(p["follows"])
    assert {k: [v["answers"], v["passed"]] for k, v in checks["answers"].items()} == counts
    final = [
        next(p for p in r["proposals"] if p["turn"] == r["n_turns"] and p["layer"] == 2)
        for r in tagged
        if r["error"] is None
    ]
    assert checks["final"]["answers"] == len(final) == 4
    assert checks["final"]["passed"] == sum(all(p["follows"]) for p in final)
    passed, answers = sum(c[1] for c in counts.values()), sum(c[0] for c in counts.values())
    assert 0 < passed < answers  # the word limit passes, commas and capitals fail some: the checks decide
    low, high = checks["final"]["lower"], checks["final"]["upper"]
    assert low <= checks["final"]["rate"] <= high and (low, high) != (0.0, 1.0)
    for key, gain in checks["final_vs"].items():
        assert key in counts and gain["prompts"] == 4
        assert gain["difference"] == pytest.approx((gain["only_first"] - gain["only_second"]) / 4, abs=1e-4)


def test_every_aggregator_prompt_holds_every_proposal_text(killed_then_resumed):
    checked = 0
    for row in _rows(killed_then_resumed["out"]):
        for turn in range(1, row["n_turns"] + 1):
            props = [p for p in row["proposals"] if p["turn"] == turn]
            if len(props) < 3:
                continue
            system = props[2]["prompt"][0]
            assert system["role"] == "system" and system["content"].startswith(AGGREGATE_AND_SYNTHESIZE)
            for i, p in enumerate(props[:2]):
                assert f"\n{i + 1}. {p['content']}" in system["content"]
            assert props[2]["prompt"][1:] == props[0]["prompt"]  # then the conversation itself
            checked += 1
    assert checked == 6 + 2 + 3


def test_turn_two_prompts_carry_turn_one_aggregated_answer(killed_then_resumed):
    rows = {r["prompt_id"]: r for r in _rows(killed_then_resumed["out"])}
    row = rows["chat3"]
    answers = {p["turn"]: p["content"] for p in row["proposals"] if p["layer"] == 2}
    for p in row["proposals"]:
        convo = [m for m in p["prompt"] if m["role"] != "system"]
        expected = []
        for t in range(1, p["turn"]):
            expected += [
                {"role": "user", "content": CHATS["chat3"][t - 1]},
                {"role": "assistant", "content": answers[t]},
            ]
        expected.append({"role": "user", "content": CHATS["chat3"][p["turn"] - 1]})
        assert convo == expected
        assert all("ORIGINAL ANSWER" not in m["content"] for m in p["prompt"])


def test_over_long_prompt_is_kept_with_its_error(killed_then_resumed):
    rows = {r["prompt_id"]: r for r in _rows(killed_then_resumed["out"])}
    long = rows["long"]
    assert long["error"].startswith("prompt too long:") and "2048" in long["error"]
    assert long["error_stage"] == "turn1/layer1/tiny-qwen2-a, turn1/layer1/tiny-llama-b"  # too long for both
    assert long["proposals"] == [] and long["messages"] == []
    assert killed_then_resumed["summary"].errors == 1


def test_summary_accounts_tokens_per_model_and_stage(killed_then_resumed):
    out, summary = killed_then_resumed["out"], killed_then_resumed["summary"]
    assert json.loads((out / "summary.json").read_text()) == summary.model_dump(mode="json")
    assert set(summary.tokens) == {
        "propose/tiny-qwen2-a",
        "propose/tiny-llama-b",
        "aggregate/tiny-qwen2-c",
    }
    rows = [r for r in _rows(out)]
    agg_completion = sum(p["completion_tokens"] for r in rows for p in r["proposals"] if p["layer"] == 2)
    assert summary.tokens["aggregate/tiny-qwen2-c"].completion_tokens == agg_completion
    assert summary.tokens["aggregate/tiny-qwen2-c"].calls == 6 + 2 + 3
    assert summary.rows == 9 and summary.metrics["completion_tokens_per_s"] > 0 and summary.wall_s > 0


def test_output_reads_in_datasets_duckdb_and_pandas(killed_then_resumed):
    import datasets
    import duckdb
    import pandas as pd

    data = str(killed_then_resumed["out"] / "data")
    ds = datasets.load_dataset("parquet", data_files=f"{data}/*.parquet", split="train")
    assert len(ds) == 9 and set(ds[0]["messages"][0]) == {"role", "content"}
    ok = ds.filter(lambda r: r["error"] is None)
    assert len(ok) == 8 and ok[0]["messages"][-1]["role"] == "assistant"
    n = duckdb.sql(f"select count(*) from read_parquet('{data}/*.parquet') where error is null").fetchall()[
        0
    ][0]
    assert n == 8
    df = pd.read_parquet(data)
    assert df["n_turns"].sum() == 6 + 2 + 3 + 1


def test_a_rerun_is_a_no_op_and_other_settings_are_refused(killed_then_resumed):
    cfg = killed_then_resumed["cfg"]
    out = killed_then_resumed["out"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert generate_sft.run(cfg) == killed_then_resumed["summary"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written
    other = cfg.model_copy(update={"layers": 3})
    with pytest.raises(ResumeError, match="config hash"):
        generate_sft.run(other)


def test_three_layers_feed_each_layer_the_previous_answers(tmp_path, tiny_models, prompts_dir, engines):
    one_shard = tmp_path / "prompts"
    one_shard.mkdir()
    table = pq.read_table(prompts_dir / "part-00001.parquet").slice(0, 1)  # chat2: two turns
    pq.write_table(table, one_shard / "part-00000.parquet")
    cfg = load_config(
        GenerateSFTConfig, TINY, _overrides(tiny_models, one_shard, tmp_path / "out", "layers=3")
    )
    summary = generate_sft.run(cfg, pools=engines.get(cfg.engine_models()))
    assert summary.rows == 1 and summary.errors == 0
    (row,) = _rows(tmp_path / "out")
    for turn in (1, 2):
        props = [p for p in row["proposals"] if p["turn"] == turn]
        assert [(p["layer"], p["model"]) for p in props] == [
            (1, "tiny-qwen2-a"),
            (1, "tiny-llama-b"),
            (2, "tiny-qwen2-a"),
            (2, "tiny-llama-b"),
            (3, "tiny-qwen2-c"),
        ]
        # layer 1: no references, just the conversation (turn 2's holds turn 1's aggregated answer)
        assert [m["role"] for m in props[0]["prompt"]] == ["user", "assistant", "user"][: 2 * turn - 1]
        if turn == 2:
            assert props[0]["prompt"][1]["content"] == row["messages"][1]["content"]
        for later, earlier in ((props[2], props[:2]), (props[3], props[:2]), (props[4], props[2:4])):
            refs = later["prompt"][0]["content"]
            assert refs == moa.inject_references([], [e["content"] for e in earlier])[0]["content"]
    assert row["messages"][-1]["content"] == row["proposals"][-1]["content"]


def test_missing_prompts_give_a_clear_error(tmp_path):
    cfg = GenerateSFTConfig(input_dir=str(tmp_path / "nothing"), output_dir=str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="run `python -m jobs.prepare` first"):
        generate_sft.run(cfg)


def test_prompts_with_a_wrong_layout_are_refused_naming_the_file(tmp_path):
    import pyarrow as pa

    d = tmp_path / "p"
    d.mkdir()
    pq.write_table(pa.table({"prompt": ["hi"]}), d / "part-00000.parquet")
    cfg = GenerateSFTConfig(input_dir=str(d), output_dir=str(tmp_path / "out"))
    with pytest.raises(schemas.SchemaError, match=r"part-00000.parquet: missing column"):
        generate_sft.run(cfg)
    assert not (tmp_path / "out").exists()  # inputs are checked before the output folder is touched


def _kill_a_busy_engine(killed: list[int], stop: threading.Event, spare: set[int]) -> None:
    """SIGKILL the first engine actor of this test's Ray seen answering a request (Ray names a process by
    the method it runs; the local Ray's processes descend from this one), other than those in ``spare``.
    Engines of other jobs on the machine are left alone: killing them once made a measurement run on the
    same machine lose its work."""
    me = os.getpid()
    while not stop.is_set():
        for p in psutil.process_iter(["cmdline"]):
            if p.pid in spare or not any("_EngineActor.chat" in part for part in p.info["cmdline"] or []):
                continue
            try:
                ours = me in {a.pid for a in p.parents()}
            except psutil.Error:
                continue
            if ours:
                p.kill()
                killed.append(p.pid)
                return
        time.sleep(0.02)


def test_an_engine_killed_or_dead_mid_request_is_survived_with_every_row_once(
    tmp_path, tiny_models, prompts_dir, engines
):
    """Two faults in one run, on the session's real engines: one engine's process is killed mid-request,
    another's vLLM engine dies inside a live actor (EngineDeadError), which must end that actor so that Ray
    restarts it, rather than turn every later row of the shard into an error row that would then be
    committed. Ray restarts both (later tests use them)."""
    import ray

    def dies_on_its_next_generate(engine_actor, marker: str) -> None:
        """Inside the actor (a local function: Ray sends it by value): the engine's next generate raises
        vLLM's EngineDeadError (what LLM.generate raises once its engine core is gone), after leaving
        ``marker``; the restarted actor has a fresh engine."""

        def dead(*args, **kwargs):
            from vllm.v1.engine.exceptions import EngineDeadError

            Path(marker).write_text(str(os.getpid()))
            raise EngineDeadError()

        engine_actor.engine.llm.generate = dead

    cfg = load_config(GenerateSFTConfig, TINY, _overrides(tiny_models, prompts_dir, tmp_path / "out"))
    pools = engines.get(cfg.engine_models())
    aggregator = pools[next(k for k in pools if "tiny-qwen2-c" in k)].actors[0]
    dead_pid = ray.get(aggregator.__ray_call__.remote(lambda self: os.getpid()))
    marker = tmp_path / "engine-dead"
    ray.get(aggregator.__ray_call__.remote(dies_on_its_next_generate, str(marker)))
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_a_busy_engine, args=(killed, stop, {dead_pid}), daemon=True)
    watcher.start()
    try:
        summary = generate_sft.run(cfg, pools=pools)
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert killed, "no busy engine was seen to kill"
    assert marker.read_text() == str(dead_pid), "the dead engine was never asked"
    assert not psutil.pid_exists(dead_pid) or psutil.Process(dead_pid).status() == psutil.STATUS_ZOMBIE
    assert summary.metrics["engine_retries"] >= 2  # the killed engine's batch and the dead engine's
    ids = [r["prompt_id"] for r in _rows(tmp_path / "out")]
    assert sorted(ids) == sorted([f"single{i}" for i in range(6)] + ["chat2", "chat3", "long"])
    assert summary.rows == 9 and summary.errors == 1  # only the over-long prompt


def test_a_pool_shutdown_returns_once_its_processes_and_their_children_are_gone(ray_local, tiny_models):
    """The next stage's engines need the GPU memory of the stopped ones: shutdown returns only when the
    engine processes are gone, their children too (on a GPU, vLLM's engine core and tensor-parallel workers
    are the actor's children: here a stand-in child)."""
    import ray

    from moaa.engine.settings import ModelConfig
    from moaa.engine.vllm import start_pools, stop_pools

    cfg = ModelConfig(model=str(tiny_models / "tiny-qwen2-a"), dtype="float32", enforce_eager=True,
                      max_model_len=256, kv_cache_space_gb=1, num_cpus=0.1)  # fmt: skip
    pools = start_pools([cfg])
    actors = [a for pool in pools.values() for a in pool.actors]
    pids = [ray.get(a.__ray_call__.remote(lambda self: os.getpid())) for a in actors]
    child = ray.get(actors[0].__ray_call__.remote(lambda self: subprocess.Popen(["sleep", "600"]).pid))
    stop_pools(pools)
    left = [p for p in [*pids, child] if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not left, f"engine processes still running after shutdown: {left}"


def test_an_engine_that_never_starts_stops_the_job_after_its_timeout_with_a_reason(ray_local, tiny_models):
    """An engine asking for more than any node has waits forever in Ray's queue: start_timeout_s ends the
    wait, names the engine and what no node has, and leaves nothing starting."""
    import ray

    from moaa.engine.settings import ModelConfig
    from moaa.engine.vllm import start_pools

    def pending_engines() -> int:  # Ray's own table of actors (no dashboard needed)
        actors = ray._private.state.actors().values()
        return sum(a["ActorClassName"] == "_EngineActor" and a["State"] == "PENDING_CREATION" for a in actors)

    cfg = ModelConfig(
        model=str(tiny_models / "tiny-qwen2-a"), num_cpus=1000, start_timeout_s=1, dtype="float32"
    )
    t0 = time.time()
    with pytest.raises(RuntimeError, match="did not start within start_timeout_s 1 s") as e:
        start_pools([cfg])
    assert time.time() - t0 < 30
    assert "'tiny-qwen2-a'" in str(e.value) and "no live node has that many CPU" in str(e.value)
    assert pending_engines() == 0  # the one that waited was stopped, not left in the queue
