"""The prepare stage: row functions, the run on the shipped samples, readers, reruns, subsets, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import prepare as prepare_job
from moaa.benchmarks import verifiable
from moaa.core import manifests, schemas, storage
from moaa.core.config import load_config
from moaa.stages.prepare import (
    PrepareConfig,
    PrepareError,
    RowError,
    is_hub_id,
    normalize_ultrachat,
    normalize_ultrafeedback,
    prompt_id,
    validate_messages,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
UF = str(SAMPLES / "ultrafeedback.jsonl")
UC = str(SAMPLES / "ultrachat.jsonl")


def main(cfg: PrepareConfig) -> dict:
    """The job as the CLI runs it; its stage numbers (the summary's metrics)."""
    return prepare_job.main(cfg).metrics


def cfg_for(out: Path, **overrides: object) -> PrepareConfig:
    """The embedded default with absolute sample paths (tests do not depend on the working folder)."""
    base = {"output_dir": str(out), "ultrafeedback.path": UF, "ultrachat.path": UC}
    base.update(overrides)
    return load_config(PrepareConfig, None, [f"{k}={json.dumps(v)}" for k, v in base.items()])


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def out_prompts(out: Path) -> pa.Table:
    return pa.concat_tables(
        [storage.read_parquet(f) for f in storage.list_files(str(out / "prompts"), ".parquet")]
    )


# ------------------------------------------------------------------------------------------ row functions


def test_prompt_id_is_sha256_of_canonical_json() -> None:
    msgs = [{"role": "user", "content": "Héllo"}]
    expected = hashlib.sha256('[{"content":"Héllo","role":"user"}]'.encode()).hexdigest()
    assert prompt_id(msgs) == expected
    # Key order and extra keys do not change it: it is derived from role and content only.
    assert prompt_id([{"content": "Héllo", "role": "user", "extra": 1}]) == expected


def test_prompt_id_depends_on_content_and_roles() -> None:
    base = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    ids = {
        prompt_id(base),
        prompt_id([{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]),
        prompt_id([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
        prompt_id(base[:1]),
    }
    assert len(ids) == 4


def _m(*pairs: tuple[object, object]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([], "no messages"),
        (_m(("system", "be nice")), "no user turn"),
        (_m(("bot", "hi")), "bad role 'bot' in message 0"),
        (_m(("user", "hi"), ("tool", "x")), "bad role 'tool' in message 1"),
        (_m(("assistant", "hi")), "message 0 is 'assistant', expected 'user'"),
        (_m(("user", "a"), ("user", "b")), "message 1 is 'user', expected 'assistant'"),
        (
            _m(("user", "a"), ("assistant", "b"), ("assistant", "c")),
            "message 2 is 'assistant', expected 'user'",
        ),
        (_m(("system", "s"), ("system", "t"), ("user", "u")), "system message at position 1"),
        (_m(("user", "a"), ("system", "s")), "system message at position 1"),
        (_m(("user", "")), "empty content in message 0"),
        (_m(("user", "a"), ("assistant", " \n\t")), "empty content in message 1"),
        (_m(("user", None)), "content of message 0 is NoneType, not a string"),
        (_m(("user", 3)), "content of message 0 is int, not a string"),
        (_m(("user", "bad \ud800 text")), "invalid UTF-8 (lone surrogate) in message 0"),
    ],
)
def test_validate_messages_rejects(messages: list[dict], reason: str) -> None:
    got = validate_messages(messages)
    assert got is not None and got.startswith(reason), got


@pytest.mark.parametrize(
    "messages",
    [
        _m(("user", "hi")),
        _m(("user", "hi"), ("assistant", "hello")),
        _m(("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "more")),
        _m(("user", "naïve café ✓")),
    ],
)
def test_validate_messages_accepts(messages: list[dict]) -> None:
    assert validate_messages(messages) is None


def test_normalize_ultrafeedback() -> None:
    row = read_jsonl(UF)[0]
    source, messages = normalize_ultrafeedback(row)
    assert source == f"ultrafeedback/{row['source']}" == "ultrafeedback/evol_instruct"
    assert messages == [{"role": "user", "content": row["instruction"]}]
    with pytest.raises(RowError, match="instruction is NoneType"):
        normalize_ultrafeedback({"source": "sharegpt", "instruction": None})


def test_normalize_ultrachat_keeps_turns_drops_extra_keys() -> None:
    row = {"prompt": "q", "prompt_id": "x", "messages": [{"content": "q", "role": "user", "name": "ann"}]}
    assert normalize_ultrachat(row) == ("ultrachat", [{"role": "user", "content": "q"}])
    with pytest.raises(RowError, match="messages is str, not a list"):
        normalize_ultrachat({"messages": "q"})


def test_is_hub_id() -> None:
    assert is_hub_id("openbmb/UltraFeedback")
    assert is_hub_id("HuggingFaceH4/ultrachat_200k")
    assert not is_hub_id(UF)
    assert not is_hub_id("data/missing.jsonl")
    assert not is_hub_id("s3://bucket/uf/")


# ------------------------------------------------------------------------------------------ shipped samples


def test_samples_are_what_the_generator_writes() -> None:
    sys.path.insert(0, str(SAMPLES))
    try:
        import make_samples
    finally:
        sys.path.remove(str(SAMPLES))
    assert read_jsonl(UF) == make_samples.ultrafeedback_rows()
    assert read_jsonl(UC) == make_samples.ultrachat_rows()


def test_samples_follow_the_real_layouts() -> None:
    for row in read_jsonl(UF):
        assert list(row) == [
            "source",
            "instruction",
            "models",
            "completions",
            "correct_answers",
            "incorrect_answers",
        ]
        assert len(row["completions"]) == 4 and [c["model"] for c in row["completions"]] == row["models"]
        for c in row["completions"]:
            assert set(c) == {
                "annotations", "critique", "custom_system_prompt", "fine-grained_score",
                "model", "overall_score", "principle", "response",
            }  # fmt: skip
            assert set(c["annotations"]) == {
                "helpfulness",
                "honesty",
                "instruction_following",
                "truthfulness",
            }
            assert all(isinstance(a["Rating"], str) for a in c["annotations"].values())
            assert 1 <= c["overall_score"] <= 10
        assert len(row["instruction"]) < 400
    for row in read_jsonl(UC):
        assert list(row) == ["prompt", "prompt_id", "messages"]
        assert row["prompt_id"] == hashlib.sha256(row["prompt"].encode()).hexdigest()
        assert row["prompt"] == row["messages"][0]["content"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prep") / "out"
    summary = main(cfg_for(out))
    assert summary is not None
    return out, summary


def test_sample_run_counts(sample_run: tuple[Path, dict]) -> None:
    out, summary = sample_run
    uf, uc = summary["sources"]["ultrafeedback"], summary["sources"]["ultrachat"]
    assert (uf["rows_in"], uf["rows_out"], uf["quarantined"]) == (35, 33, 2)
    assert (uc["rows_in"], uc["rows_out"], uc["quarantined"]) == (15, 12, 3)
    # Nothing vanishes: every row is in a shard or in the quarantine.
    assert summary["rows_in"] == summary["rows_out"] + summary["quarantined"] == 50
    assert summary["shards"] == 3  # 45 rows at 16 per shard
    assert summary["quarantined_by_reason"]["duplicate"] == 1
    assert summary == storage.read_json(str(out / "summary.json"))["metrics"]


def test_sample_run_shards(sample_run: tuple[Path, dict]) -> None:
    out, _ = sample_run
    files = storage.list_files(str(out / "prompts"), ".parquet")
    assert [Path(f).name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for f in files:
        schemas.validate(storage.read_parquet(f), "prompts", where=f)
    rows = out_prompts(out).to_pylist()
    assert [storage.parquet_num_rows(f) for f in files] == [16, 16, 13]
    assert len({r["prompt_id"] for r in rows}) == 45
    for r in rows:
        assert r["prompt_id"] == prompt_id(r["messages"])
        assert validate_messages(r["messages"]) is None
        assert r["n_turns"] == sum(m["role"] == "user" for m in r["messages"])
    uf = [r for r in rows if r["source"].startswith("ultrafeedback/")]
    uc = [r for r in rows if r["source"] == "ultrachat"]
    assert len(uf) == 33 and all(r["n_turns"] == 1 for r in uf)
    assert len(uc) == 12 and {r["n_turns"] for r in uc} == {2, 3, 4}
    assert {"ultrafeedback/evol_instruct", "ultrafeedback/false_qa", "ultrafeedback/flan_v2_niv2"} <= {
        r["source"] for r in uf
    }
    # Input order is kept: UltraFeedback first, in file order (with its verifiable instructions appended).
    assert uf[0]["messages"][0]["content"] == verifiable.append(
        read_jsonl(UF)[0]["instruction"], uf[0]["constraints"]
    )
    assert rows[33]["source"] == "ultrachat"


def test_sample_run_quarantine(sample_run: tuple[Path, dict]) -> None:
    out, _ = sample_run
    table = storage.read_parquet(str(out / "quarantine.parquet"))
    schemas.validate(table, "quarantine")
    got = {(Path(r["source_file"]).name, r["row_index"]): r for r in table.to_pylist()}
    original = prompt_id([{"role": "user", "content": read_jsonl(UF)[3]["instruction"]}])
    expected = {
        ("ultrafeedback.jsonl", 10): f"duplicate of {original}",
        ("ultrafeedback.jsonl", 20): "empty content in message 0",
        ("ultrachat.jsonl", 3): "message 1 is 'user', expected 'assistant'",
        ("ultrachat.jsonl", 7): "empty content in message 2",
        ("ultrachat.jsonl", 11): "bad role 'bot' in message 1",
    }
    assert set(got) == set(expected)
    for key, reason in expected.items():
        assert got[key]["reason"].startswith(reason), got[key]["reason"]
    # raw is the input line itself, so the row can be inspected or repaired.
    assert json.loads(got[("ultrachat.jsonl", 11)]["raw"]) == read_jsonl(UC)[11]
    # The duplicate points at a prompt that is in the output.
    assert original in set(out_prompts(out).column("prompt_id").to_pylist())


def test_sample_run_manifest(sample_run: tuple[Path, dict]) -> None:
    out, _ = sample_run
    manifest = manifests.require_complete(str(out), "prepare")
    assert sorted(manifest["shards"]) == [f"prompts/part-0000{i}.parquet" for i in range(3)]
    assert manifest["prompts"] == str(out / "prompts")
    assert [v["rows"] for v in manifest["shards"].values()] == [16, 16, 13]
    assert manifest["quarantine"] == str(out / "quarantine.parquet")


def test_outputs_read_back_with_pandas_duckdb_and_datasets(
    sample_run: tuple[Path, dict], tmp_path: Path
) -> None:
    duckdb = pytest.importorskip("duckdb")
    datasets = pytest.importorskip("datasets")
    import pandas as pd

    out, _ = sample_run
    df = pd.read_parquet(out / "prompts")
    assert len(df) == 45 and list(df.columns) == ["prompt_id", "source", "messages", "n_turns", "constraints"]
    assert len(pd.read_parquet(out / "quarantine.parquet")) == 5

    glob = str(out / "prompts" / "*.parquet")
    n, turns = duckdb.sql(f"select count(*), sum(n_turns) from read_parquet('{glob}')").fetchall()[0]
    assert n == 45 and turns == 33 + sum(
        sum(m["role"] == "user" for m in r["messages"])
        for i, r in enumerate(read_jsonl(UC))
        if i not in (3, 7, 11)
    )
    roles = duckdb.sql(
        f"select distinct unnest(messages).role as r from read_parquet('{glob}') order by r"
    ).fetchall()
    assert roles == [("assistant",), ("user",)]

    ds = datasets.load_dataset("parquet", data_files=glob, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 45
    assert ds[0]["messages"][0]["role"] == "user" and isinstance(ds[0]["n_turns"], int)


# --------------------------------------------------------------------------------------------- readers


def test_jsonl_bad_lines_are_quarantined_with_line_numbers(tmp_path: Path) -> None:
    good = json.dumps(
        {"prompt": "hi", "prompt_id": "x", "messages": _m(("user", "Hi there"), ("assistant", "Hello"))}
    )
    good2 = json.dumps({"prompt": "q", "prompt_id": "y", "messages": _m(("user", "A different question"))})
    surrogate = '{"prompt": "s", "prompt_id": "z", "messages": [{"role": "user", "content": "bad \\ud800"}]}'
    lines = [
        good.encode(),
        b'{"prompt": "caf\xe9 \xff"}',
        b"this is not json",
        good2.encode(),
        b"[1, 2]",
        b"",
    ]
    lines.append(surrogate.encode())
    path = tmp_path / "chat.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    summary = main(cfg_for(out, **{"ultrafeedback.path": None, "ultrachat.path": str(path)}))
    assert summary is not None and summary["rows_out"] == 2 and summary["quarantined"] == 4
    q = {r["row_index"]: r for r in storage.read_parquet(str(out / "quarantine.parquet")).to_pylist()}
    assert sorted(q) == [1, 2, 4, 6]
    assert q[1]["reason"].startswith("line 1 is not valid UTF-8") and "\ufffd" in q[1]["raw"]
    assert q[2]["reason"].startswith("line 2 is not valid JSON") and q[2]["raw"] == "this is not json"
    assert q[4]["reason"] == "line 4 is a JSON list, not an object"
    assert q[6]["reason"] == "invalid UTF-8 (lone surrogate) in message 0"
    assert all(r["source_file"] == str(path) for r in q.values())


def _write_parquet(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_parquet_inputs_give_the_same_prompts(sample_run: tuple[Path, dict], tmp_path: Path) -> None:
    _write_parquet(read_jsonl(UF), tmp_path / "uf.parquet")
    # A folder of Parquet files, as the hub stores them: the rows are read in file-name order.
    uc_rows = read_jsonl(UC)
    _write_parquet(uc_rows[:8], tmp_path / "uc" / "train-00000.parquet")
    _write_parquet(uc_rows[8:], tmp_path / "uc" / "train-00001.parquet")
    out = tmp_path / "out"
    summary = main(
        cfg_for(
            out,
            **{"ultrafeedback.path": str(tmp_path / "uf.parquet"), "ultrachat.path": str(tmp_path / "uc")},
        )
    )
    assert summary is not None and summary["rows_out"] == 45 and summary["quarantined"] == 5
    from_jsonl = out_prompts(sample_run[0]).to_pylist()
    assert out_prompts(out).to_pylist() == from_jsonl
    q = storage.read_parquet(str(out / "quarantine.parquet")).to_pylist()
    assert {(Path(r["source_file"]).name, r["row_index"]) for r in q} == {
        ("uf.parquet", 10), ("uf.parquet", 20), ("train-00000.parquet", 3), ("train-00000.parquet", 7),
        ("train-00001.parquet", 3),
    }  # fmt: skip


@pytest.mark.parametrize("form", ["list", "lines"])
def test_json_file_as_list_or_json_lines(tmp_path: Path, form: str) -> None:
    rows = read_jsonl(UC)
    path = tmp_path / "uc.json"
    path.write_text(
        json.dumps(rows) if form == "list" else Path(UC).read_text(encoding="utf-8"), encoding="utf-8"
    )
    out = tmp_path / "out"
    summary = main(cfg_for(out, **{"ultrafeedback.path": None, "ultrachat.path": str(path)}))
    assert summary is not None and (summary["rows_out"], summary["quarantined"]) == (12, 3)
    q = storage.read_parquet(str(out / "quarantine.parquet")).to_pylist()
    assert sorted(r["row_index"] for r in q) == [3, 7, 11]


def test_wrong_layout_names_file_and_fix(tmp_path: Path) -> None:
    _write_parquet([{"prompt": "x", "text": "y"}], tmp_path / "wrong.parquet")
    with pytest.raises(
        PrepareError, match=r"wrong\.parquet: column 'source' missing; expected the openbmb/Ultra"
    ):
        main(cfg_for(tmp_path / "o1", **{"ultrafeedback.path": str(tmp_path / "wrong.parquet")}))
    # A JSONL file of the other dataset: the first row shows it is the wrong layout.
    with pytest.raises(
        PrepareError, match=r"ultrachat\.jsonl: column 'source' missing; expected the openbmb"
    ):
        main(cfg_for(tmp_path / "o2", **{"ultrafeedback.path": UC}))
    with pytest.raises(PrepareError, match=r"nope\.jsonl: no such file or folder"):
        main(cfg_for(tmp_path / "o3", **{"ultrachat.path": str(tmp_path / "nope.jsonl")}))


def test_hub_ids_go_through_load_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path: str, split: str) -> object:
        calls.append((path, split))
        return datasets.Dataset.from_list(read_jsonl(UF))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = tmp_path / "out"
    summary = main(cfg_for(out, **{"ultrafeedback.path": "openbmb/UltraFeedback", "ultrachat.path": None}))
    assert summary is not None and summary["rows_out"] == 33
    assert calls == [("openbmb/UltraFeedback", "train")]  # loaded once, reused by the second pass
    q = storage.read_parquet(str(out / "quarantine.parquet")).to_pylist()
    assert {(r["source_file"], r["row_index"]) for r in q} == {
        ("openbmb/UltraFeedback[train]", 10),
        ("openbmb/UltraFeedback[train]", 20),
    }
    # Only the needed columns were read: raw holds source and instruction, not the completions.
    assert set(json.loads(q[0]["raw"])) == {"source", "instruction"}


def test_dedup_off_keeps_the_duplicate(tmp_path: Path) -> None:
    summary = main(cfg_for(tmp_path / "out", dedup=False, **{"ultrachat.path": None}))
    assert summary is not None and summary["rows_out"] == 34 and summary["quarantined"] == 1


# --------------------------------------------------------------------------------------------- reruns


def test_rerun_is_skipped_and_other_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    first = main(cfg_for(out))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(cfg_for(out)) == first
    assert "is complete with this config: nothing to do" in capsys.readouterr().out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(manifests.ResumeError, match="config hash"):
        main(cfg_for(out, rows_per_shard=8))


def test_interrupted_run_is_redone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = cfg_for(out)
    manifests.start_manifest(str(out), "prepare", "demo", cfg.fingerprint(), {})  # status stays "running"
    (out / "prompts").mkdir()
    (out / "prompts" / "part-00009.parquet").write_bytes(b"stale")  # left by a killed attempt
    summary = main(cfg)
    assert summary is not None and summary["shards"] == 3
    assert sorted(p.name for p in (out / "prompts").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]


# --------------------------------------------------------------------------------------------- subsets


def _ids(out: Path) -> list[str]:
    return out_prompts(out).column("prompt_id").to_pylist()


def test_subset_is_deterministic_per_seed(tmp_path: Path) -> None:
    def run(name: str, seed: int) -> list[str]:
        # No instructions: with them a prompt's id would depend on the seed too (they are drawn with it)
        subsets = {"ultrachat.subset": 5, "ultrafeedback.subset": 10, "constraints.share": 0.0}
        summary = main(cfg_for(tmp_path / name, seed=seed, **subsets))
        assert summary is not None
        for s in summary["sources"].values():
            assert s["rows_in"] == s["rows_out"] + s["quarantined"] + s["not_sampled"]
        assert (
            summary["sources"]["ultrachat"]["rows_out"],
            summary["sources"]["ultrachat"]["not_sampled"],
        ) == (5, 7)
        assert summary["sources"]["ultrafeedback"]["rows_out"] == 10
        return _ids(tmp_path / name)

    a, b, c = run("a", 1), run("b", 1), run("c", 2)
    assert a == b
    assert set(a) != set(c)
    all_ids = set(_ids_of_full_run(tmp_path))
    assert set(a) <= all_ids and set(c) <= all_ids


def _ids_of_full_run(tmp_path: Path) -> list[str]:
    main(cfg_for(tmp_path / "full", **{"constraints.share": 0.0}))
    return _ids(tmp_path / "full")


# --------------------------------------------------------------------------------------------- the CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "jobs.prepare", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_runs_the_tiny_config(tmp_path: Path) -> None:
    proc = _cli("--config", "configs/prepare/tiny.yaml", f"runs_dir={tmp_path}", "run_id=cli")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "cli" / "prepare"
    assert (
        "prepare: 45 prompts in 3 shards (33 ultrafeedback, 12 ultrachat), 20 with verifiable instructions, "
        f"5 quarantined -> {out}" in proc.stdout
    )
    manifests.require_complete(str(out), "prepare")
    assert storage.read_json(str(out / "summary.json"))["rows"] == 45


def test_cli_rejects_unknown_key() -> None:
    proc = _cli("bogus_key=1")
    assert proc.returncode == 2
    assert "unknown key 'bogus_key'" in proc.stderr and "rows_per_shard" in proc.stderr


def test_tiny_yaml_is_the_embedded_default() -> None:
    assert load_config(PrepareConfig, ROOT / "configs/prepare/tiny.yaml") == PrepareConfig()
    paper = load_config(PrepareConfig, ROOT / "configs/prepare/paper.yaml")
    assert paper.ultrafeedback.path == "openbmb/UltraFeedback" and paper.ultrachat.subset == 5000
    assert paper.rows_per_shard == 1000 and paper.seed == 42


def test_cli_help_lists_nested_keys() -> None:
    proc = _cli("--help")
    assert proc.returncode == 0
    assert "ultrachat.subset (int | None, 5000)" in proc.stdout and "ultrafeedback.path" in proc.stdout


# ------------------------------------------------------------------------------------------ decontamination

SHARED = ROOT.parent / "shared" / "data"
BENCHMARK_FILES = [
    SHARED / "mt_bench/question.jsonl",
    SHARED / "arena_hard/question.jsonl",
    SHARED / "alpaca_eval/gpt4_1106_preview.model_outputs.json",
    SHARED / "ifeval/input_data.jsonl",
]


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")
@pytest.mark.parametrize("drop", [False, True])
def test_prompts_that_overlap_a_benchmark_are_listed_or_set_aside(tmp_path: Path, drop: bool) -> None:
    question = json.loads((SHARED / "mt_bench/question.jsonl").read_text().splitlines()[0])
    leaked = {
        "prompt": "x",
        "prompt_id": "leak",
        "messages": [{"role": "user", "content": "Hi. " + question["turns"][0]}],
    }
    near = " ".join(question["turns"][0].split()[:12])  # 12 words: below the 13-word span
    kept = {"prompt": "y", "prompt_id": "near", "messages": [{"role": "user", "content": near}]}
    chats = tmp_path / "chat.jsonl"
    chats.write_text(json.dumps(leaked) + "\n" + json.dumps(kept) + "\n")
    overrides = {"ultrachat.path": str(chats), "decontaminate": [str(p) for p in BENCHMARK_FILES]}
    out = tmp_path / "out"
    summary = main(cfg_for(out, drop_contaminated=drop, **overrides))
    listed = storage.read_json(str(out / "contamination.json"))
    # MT-Bench's first question; AlpacaEval's row 801 holds the same text (the benchmarks overlap too)
    assert len(listed) == 1 and summary["contaminated"] == 1
    assert listed[0]["benchmarks"][0] == "mt_bench/question.jsonl#0" and listed[0]["row_index"] == 0
    quarantine = storage.read_parquet(str(out / "quarantine.parquet")).to_pylist()
    dropped = [r for r in quarantine if r["reason"].startswith("contaminated: ")]
    assert len(dropped) == int(drop) and summary["sources"]["ultrachat"]["rows_out"] == 2 - int(drop)
    if drop:
        assert (
            "mt_bench/question.jsonl#0" in dropped[0]["reason"]
            and summary["quarantined_by_reason"]["contaminated"] == 1
        )


def test_an_unreadable_benchmark_file_is_named_before_any_output(tmp_path: Path) -> None:
    bad = tmp_path / "bench.jsonl"
    bad.write_text('{"question": "?"}\n')
    with pytest.raises(PrepareError, match=r"decontaminate: .*bench.jsonl.*not a benchmark layout"):
        main(cfg_for(tmp_path / "out", decontaminate=[str(bad)]))
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")
def test_an_ifeval_prompt_planted_in_the_input_is_set_aside(tmp_path: Path) -> None:
    """Training prompts carry IFEval's kinds of instruction: IFEval's own prompts must not be among them."""
    ifeval = json.loads((SHARED / "ifeval/input_data.jsonl").read_text().splitlines()[5])
    planted = {"prompt": "x", "prompt_id": "p", "messages": [{"role": "user", "content": ifeval["prompt"]}]}
    chats = tmp_path / "chat.jsonl"
    chats.write_text(json.dumps(planted) + "\n")
    out = tmp_path / "out"
    bench = [str(SHARED / "ifeval/input_data.jsonl")]
    summary = main(
        cfg_for(out, drop_contaminated=True, decontaminate=bench, **{"ultrachat.path": str(chats)})
    )
    listed = storage.read_json(str(out / "contamination.json"))
    assert [r["benchmarks"] for r in listed] == [["ifeval/input_data.jsonl#5"]]
    assert (
        summary["sources"]["ultrachat"]["rows_out"] == 0
        and summary["quarantined_by_reason"]["contaminated"] == 1
    )
    prompts = out_prompts(out).to_pylist()
    assert all(ifeval["prompt"][:60] not in r["messages"][-1]["content"] for r in prompts)


# ------------------------------------------------------------------------------- verifiable instructions


def _constrained(out: Path, **overrides: object) -> tuple[dict, list[dict]]:
    summary = main(cfg_for(out, **overrides))
    return summary, sorted(out_prompts(out).to_pylist(), key=lambda r: r["prompt_id"])


def test_constraints_are_seeded_stored_and_phrased_in_the_last_user_turn(tmp_path: Path) -> None:
    tagged = {"constraints.share": 0.6, "constraints.max_per_prompt": 3}
    summary, rows = _constrained(tmp_path / "a", **tagged)
    _, again = _constrained(tmp_path / "b", **tagged)
    _, other = _constrained(tmp_path / "c", seed=7, **tagged)
    assert rows == again  # same seed and inputs: the same rows, instructions and all
    assert [r["constraints"] for r in rows] != [r["constraints"] for r in other]
    with_ = [r for r in rows if r["constraints"]]
    # the summary's counts are a recount of the Parquet
    assert summary["constrained"] == len(with_) and 15 <= len(with_) <= 40
    kinds: dict[str, int] = {}
    for r in with_:
        for c in r["constraints"]:
            kinds[c["id"]] = kinds.get(c["id"], 0) + 1
    assert summary["constraint_kinds"] == dict(sorted(kinds.items()))
    assert max(len(r["constraints"]) for r in with_) >= 2 and all(len(r["constraints"]) <= 3 for r in with_)
    clash = verifiable.conflicts()
    for r in with_:
        ids = [c["id"] for c in r["constraints"]]
        assert all(b not in clash[a] for i, a in enumerate(ids) for b in ids[i + 1 :]), ids
        last_user = [m for m in r["messages"] if m["role"] == "user"][-1]["content"]
        assert last_user.endswith("\n\n" + verifiable.phrase(r["constraints"]))
        assert r["prompt_id"] == prompt_id(r["messages"])
        for c in r["constraints"]:
            kwargs = json.loads(c["kwargs"])  # parameters as JSON object text, readable anywhere
            assert isinstance(kwargs, dict) and c["id"] in verifiable.KINDS
    assert all(r["constraints"] == [] for r in rows if r not in with_)
    # the multi-turn chats get them on their last turn, not the first
    chats = [r for r in with_ if r["n_turns"] > 1]
    assert chats and all(
        verifiable.phrase(r["constraints"]) not in r["messages"][0]["content"] for r in chats
    )
    # none: no instructions, and the prompts are the input's own
    summary, plain = _constrained(tmp_path / "d", **{"constraints.share": 0.0})
    assert summary["constrained"] == 0 and all(r["constraints"] == [] for r in plain)


def test_constraint_kinds_can_be_chosen_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    kinds = ["punctuation:no_comma", "startend:end_checker"]
    _, rows = _constrained(tmp_path / "a", **{"constraints.share": 1.0, "constraints.kinds": kinds})
    assert {c["id"] for r in rows for c in r["constraints"]} == set(kinds) and all(
        r["constraints"] for r in rows
    )
    with pytest.raises(Exception, match=r"constraints.kinds[\s\S]*unknown kind 'no_commas'"):
        cfg_for(tmp_path / "b", **{"constraints.kinds": ["no_commas"]})
