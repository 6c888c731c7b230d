"""One engine for the shard-by-shard Ray Data jobs (generate_sft, generate_dpo, judge_eval):

    shards still to do -> light readers -> the stage's map_batches steps over shared engine pools
      -> commit each shard atomically (its files, then the manifest) -> the stage's summary

A stage gives the shards (input file, rows, turns), a loader (input file -> row states, run in a Ray task),
the pipeline of one pass and a commit function (states -> tables and per-shard stats). Rows travel as one
JSON ``state`` column, so every block of every step has one Arrow schema.

Turn passes: a shard of multi-turn chats needs one pass per turn, because turn t's prompt holds turn t-1's
output. Pass t reads the states pass t-1 left in ``<out>/work/turn-<t-1>/``; the engines stay up across
passes. A killed run is rerun the same way: committed shards are skipped and the others resume from their
last finished turn, so every row ends in the output once.
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from moaa.core import console, manifests, stage, storage
from moaa.engine.settings import ModelConfig, check_local, check_sources, engine_key, model_settings
from moaa.engine.vllm import EnginePool, EngineStage, start_pools, stop_pools

# Light tasks (reading shards, the actors that call the engines) reserve no CPU: they wait on files and on
# engine calls. Any share would add up against the engines' own: one caller per engine stage stays up for the
# whole dataset, so on 2 CPUs four 0.4-CPU engines plus six callers at 0.1 left nothing for the shard
# readers, and the job waited forever with every process idle (measured: generate_dpo's tiny walkthrough).
LIGHT_CPUS = 0

State = dict[str, Any]
Loader = Callable[[str, dict[str, Any]], list[State]]
Pipeline = Callable[[Any, int, dict[str, EnginePool]], Any]
Commit = Callable[[str, list[State]], tuple[dict[str, pa.Table], dict[str, Any]]]


@dataclass
class Shard:
    name: str  # the input file's name; its outputs have the same name
    source: str  # the input file
    rows: int  # rows it will hold
    turns: int = 1  # passes it needs
    params: dict[str, Any] = field(default_factory=dict)  # handed to the loader (e.g. a row range)


def init_ray(address: str | None) -> None:
    """Start (or connect to) Ray for a job; a command-line job's console stays moaa's
    (``moaa.core.console``)."""
    import ray.data

    console.start_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False
    # Ray Data stops a dataset that moved no block for 30 min: one engine batch of long answers on a busy
    # CPU engine takes longer (measured here: 64 IFEval answers of up to 1280 tokens on a shared 2-core
    # machine, killed at 1800 s with the work lost). The engine pools watch their engines themselves
    # (dead actors are replaced and their requests re-sent), so no dataset-wide timeout is needed.
    ctx.execution_no_progress_timeout_s = -1


def engine_stage(ds, pools: dict[str, EnginePool], model: ModelConfig, build, apply, **stage_kwargs: Any):
    """One ``map_batches`` step that feeds ``model``'s engine pool (see ``EngineStage``)."""
    import ray.data

    pool = pools[engine_key(model)]
    return ds.map_batches(
        EngineStage,
        fn_constructor_kwargs={
            "actors": pool.actors,
            "build": build,
            "apply": apply,
            "max_retries": model.max_retries,
            **stage_kwargs,
        },
        batch_size=model.batch_size,
        # Up to two callers per engine: one batch generating, one queued, so an engine never waits.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2 * pool.cfg.replicas),
        num_cpus=LIGHT_CPUS,
    )


def _load(item: dict[str, Any], load: Loader) -> list[dict[str, Any]]:
    """The rows of the file named in ``source`` as ``shard``/``state`` rows: pass 1 loads input rows as fresh
    states, later passes read the states an earlier pass saved."""
    if item["turn"] == 1:
        states = [json.dumps(s, ensure_ascii=False) for s in load(item["source"], json.loads(item["params"]))]
    else:
        states = storage.read_parquet(item["source"]).column("state").to_pylist()
    return [{"shard": item["shard"], "state": state} for state in states]


def read(items: list[dict[str, Any]], load: Loader):
    """One light task per file rather than ``ray.data.read_parquet``: its file-listing task asks for a whole
    CPU, which engine actors holding fractional CPUs can starve forever on a small machine.

    The load is a ``flat_map`` (one file item -> its rows) so that it stays out of the first engine stage's
    operator: Ray Data does not fuse an operator that can change the number of rows into one that bundles
    its input by batch size (operator_fusion._can_fuse_map_ops; ``map_batches`` is exempted, which is why
    the load is not one). Fused, the engine stage bundled its input by *file items* up to its batch size, so
    one task took every shard (measured: 6 shards of 50 prompts went through each layer as one 300-row block,
    no layer overlapped another, nothing was committed for 16 minutes, and a larger input outlasted Ray
    Data's no-progress timeout). Apart, each shard is a block of its own rows: the layers pipeline shard by
    shard and a shard is committed as soon as its last layer is done."""
    import ray.data

    return ray.data.from_items(items, override_num_blocks=len(items)).flat_map(
        _load, fn_kwargs={"load": load}, num_cpus=LIGHT_CPUS
    )


def work_file(out: str, turn: int, shard: str) -> str:
    """Where the states of ``shard`` after ``turn`` wait for its next pass."""
    return storage.join(out, "work", f"turn-{turn}", shard)


def is_committed(out: str, manifest: dict[str, Any], name: str) -> bool:
    done = manifest["shards"].get(name)
    return done is not None and all(storage.exists(storage.join(out, f)) for f in done["files"])


class _Committer:
    """Collects streamed states per shard; a shard whose states are all in is saved for its next pass or
    committed: its files (atomic writes), then its stats in the manifest."""

    def __init__(self, out: str, manifest: dict[str, Any], shards: list[Shard], commit: Commit):
        self.out, self.manifest, self.commit_fn = out, manifest, commit
        self.by_name = {s.name: s for s in shards}
        self.buffers: dict[str, list[str]] = defaultdict(list)
        self.committed: list[str] = []
        self.completion_tokens = 0  # of the shards committed by this call (the progress line's tok/s)

    def add(self, names: list[str], states: list[str], turn: int) -> None:
        for name, state in zip(names, states):
            self.buffers[name].append(state)
            if len(self.buffers[name]) == self.by_name[name].rows:
                self.done(name, self.buffers.pop(name), turn)

    def done(self, name: str, states: list[str], turn: int) -> None:
        if turn < self.by_name[name].turns:
            table = pa.table({"shard": [name] * len(states), "state": states})
            storage.write_parquet(table, work_file(self.out, turn, name))
            return
        parsed = [json.loads(s) for s in states]
        tables, stats = self.commit_fn(name, parsed)
        stats["engine_retries"] = sum(s.get("engine_retries", 0) for s in parsed)
        files = []
        for folder, table in tables.items():
            files.append(posixpath.join(folder, name))
            storage.write_parquet(table, storage.join(self.out, folder, name))
        self.manifest["shards"][name] = {**stats, "files": files}
        manifests.save_manifest(self.out, self.manifest)
        self.committed.append(name)
        self.completion_tokens += sum(t.get("completion_tokens", 0) for t in stats.get("tokens", {}).values())

    def where(self) -> str:
        return f"{len(self.committed)}/{len(self.by_name)} shards"

    def check_drained(self, turn: int) -> None:
        if self.buffers:
            missing = {s: self.by_name[s].rows - len(b) for s, b in self.buffers.items()}
            raise RuntimeError(f"pass {turn}: rows missing from the pipeline output for shards {missing}")


def run(
    work: stage.Work,
    shards: list[Shard],
    *,
    load: Loader,
    pipeline: Pipeline,
    commit: Commit,
    models: list[ModelConfig],
    pools: dict[str, EnginePool] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Open the stage's manifest and process every shard not yet committed; returns the manifest and the
    names committed by this call. ``pools``: engines the caller started and keeps (keyed by
    ``engine_key``); by default they are started and stopped here."""
    cfg, out = work.cfg, work.out
    check_sources(model_settings(cfg))  # before the output folder, Ray or any engine
    check_local(models)
    manifest = work.open_manifest()
    todo = [s for s in shards if not is_committed(out, manifest, s.name)]
    committer = _Committer(out, manifest, todo, commit)
    for s in [s for s in todo if s.rows == 0]:  # nothing to send: commit the empty shard now
        committer.done(s.name, [], s.turns)
    todo = [s for s in todo if s.rows > 0]
    if todo:
        init_ray(cfg.ray_address)
        own = pools is None
        pools = start_pools(models) if pools is None else pools
        # one unit per row and pass: a 3-turn chat counts 3
        progress = console.Progress(cfg.stage, sum(s.rows * s.turns for s in todo), "row-turns").start()
        done = 0
        try:
            for turn in range(1, max(s.turns for s in todo) + 1):
                this = [
                    s for s in todo if s.turns >= turn and not storage.exists(work_file(out, turn, s.name))
                ]
                if not this:
                    continue
                items = [
                    {
                        "shard": s.name,
                        "source": s.source if turn == 1 else work_file(out, turn - 1, s.name),
                        "turn": turn,
                        "params": json.dumps(s.params),
                    }
                    for s in this
                ]
                ds = pipeline(read(items, load), turn, pools)
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    committer.add(list(batch["shard"]), list(batch["state"]), turn)
                    done += len(batch["shard"])
                    progress.update(done, committer.where(), committer.completion_tokens)
                committer.check_drained(turn)
        finally:
            progress.close()
            if own:
                stop_pools(pools)
    storage.remove(storage.join(out, "work"))
    return manifest, committer.committed


def progress(manifest: dict[str, Any], committed: list[str]) -> dict[str, int]:
    """The summary metrics every shard stage reports: shards done, done by this call, batches re-sent."""
    return {
        "shards": len(manifest["shards"]),
        "shards_this_run": len(committed),
        "engine_retries": totals(manifest)["engine_retries"],
    }


def totals(manifest: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
    """Sums of the per-shard stats (every committed shard, or ``names``): numbers added, ``tokens`` per
    'role/model' added, other objects of counts (e.g. verifiable pass counts per model) added key by key."""
    picked = [manifest["shards"][n] for n in (manifest["shards"] if names is None else names)]
    total: defaultdict[str, Any] = defaultdict(int)
    tokens: dict[str, dict[str, int]] = {}
    for stats in picked:
        for key, value in stats.items():
            if key == "tokens":
                stage.add_tokens(tokens, value)
            elif isinstance(value, dict):
                total[key] = add_counts(total[key] if key in total else {}, value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                total[key] += value
    total["tokens"] = tokens
    return total


def add_counts(acc: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """``value``'s numbers added into ``acc``, nested objects key by key."""
    for k, v in value.items():
        if isinstance(v, dict):
            acc[k] = add_counts(acc.get(k, {}), v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            acc[k] = acc.get(k, 0) + v
    return acc
