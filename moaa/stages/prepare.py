"""The ``prepare`` stage: UltraFeedback and UltraChat rows in; validated, deduplicated prompts out.

Inputs are hub ids (``datasets.load_dataset``), or local/cloud Parquet, JSONL or JSON files (or folders of
them). Outputs, under ``<runs_dir>/<run_id>/prepare/`` (or ``output_dir``):

- ``prompts/part-NNNNN.parquet``: schema ``prompts`` (``schemas/prompts.json``);
- ``quarantine.parquet``: schema ``quarantine``, every row that was set aside and why (always written);
- ``summary.json``: rows in/out per source, quarantined rows per reason, shards, wall time;
- ``manifest.json``: see ``moaa.core.manifests``.

Every input row ends up in exactly one place: a shard, the quarantine, or (only when ``subset`` is set)
the rows the subset did not draw, which ``summary.json`` counts as ``not_sampled``.

The work runs in two passes over each input so that memory stays small whatever the input size: the first
validates and deduplicates, keeping only row numbers and ids; the second re-reads the rows that were kept
(and drawn) and writes them shard by shard. Both passes read the same bytes in the same order.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field

from moaa.benchmarks import decontaminate, verifiable
from moaa.benchmarks.verifiable import ConstraintsConfig
from moaa.core import schemas, storage
from moaa.core.config import Config, HubIdOrPath, InputPath, UserError
from moaa.core.stage import Outcome, Stage, StageConfig, StageMetrics, Summary, Work, num

NAME = "prepare"
FILE_SUFFIXES = (".parquet", ".jsonl", ".json")
ROLES = ("system", "user", "assistant")
# Fields that say where the outputs go or how the job runs, not what they hold: left out of the config hash
# so that the same work reached through output_dir or through runs_dir/run_id is recognized as the same.
LOCATION_FIELDS = {"run_id", "runs_dir", "output_dir", "round", "ray_address"}


class PrepareError(UserError, ValueError):
    """An input that cannot be used at all; the message names the file and the fix."""


class RowError(ValueError):
    """One input row that cannot be used; its message becomes the quarantine reason."""


# ---------------------------------------------------------------------------------------------- config


class SourceConfig(Config):
    """Where one dataset comes from and how much of it to keep."""

    path: HubIdOrPath | None = Field(
        None,
        description="Hub id (e.g. openbmb/UltraFeedback), or a local/cloud path to a .parquet, .jsonl or "
        ".json file or a folder of them, in the dataset's own column layout; null skips this source.",
    )
    split: str = Field("train", description="Split to load when path is a hub id (ignored for files).")
    subset: int | None = Field(
        None,
        ge=1,
        description="Keep at most this many rows, drawn with seed after validation and dedup; "
        "null keeps all.",
    )


class UltraFeedbackConfig(SourceConfig):
    path: HubIdOrPath | None = Field(
        "data/samples/ultrafeedback.jsonl",
        description="openbmb/UltraFeedback: hub id, or a .parquet/.jsonl/.json file or folder in its layout "
        "(source, instruction, ...); null skips it.",
    )
    split: str = Field("train", description="Split to load when path is a hub id (ignored for files).")


class UltraChatConfig(SourceConfig):
    path: HubIdOrPath | None = Field(
        "data/samples/ultrachat.jsonl",
        description="HuggingFaceH4/ultrachat_200k: hub id, or a .parquet/.jsonl/.json file or folder in its "
        "layout (prompt, prompt_id, messages); null skips it.",
    )
    split: str = Field("train_sft", description="Split to load when path is a hub id (ignored for files).")
    subset: int | None = Field(
        5000,
        ge=1,
        description="Keep at most this many conversations (the paper uses 5000), drawn with seed after "
        "validation and dedup; null keeps all.",
    )


class PrepareConfig(StageConfig):
    """Config of ``jobs.prepare``. The defaults are the tiny embedded run on ``data/samples``. Every round
    of a run reads the same prompts (``round`` does not move them)."""

    ultrafeedback: UltraFeedbackConfig = Field(
        UltraFeedbackConfig(), description="Single-turn prompts from UltraFeedback."
    )
    ultrachat: UltraChatConfig = Field(
        UltraChatConfig(), description="Multi-turn conversations from UltraChat."
    )
    seed: int = Field(42, description="Seed of the subset draws (same seed and inputs, same rows).")
    dedup: bool = Field(
        True,
        description="Drop rows whose user turns repeat an earlier row's (whitespace-normalized), across "
        "sources; the later row goes to the quarantine as 'duplicate of <prompt_id>'.",
    )
    rows_per_shard: int = Field(16, ge=1, description="Rows per prompts/part-NNNNN.parquet file.")
    decontaminate: list[InputPath] = Field(
        default_factory=list,
        description="Benchmark files in their published layout (MT-Bench or Arena-Hard question.jsonl, "
        "AlpacaEval *.json): prompts whose user turns share a 13-word span with a benchmark prompt are "
        "listed in contamination.json and counted in the summary (UltraChat is known to overlap public "
        "benchmarks).",
    )
    drop_contaminated: bool = Field(
        False, description="Set contaminated prompts aside in the quarantine instead of only listing them."
    )
    constraints: ConstraintsConfig = Field(
        # Half the embedded default's prompts, one instruction each: the demo measures instruction
        # following at every stage (a yardstick without a judge); the paper's recipe has none (paper.yaml).
        ConstraintsConfig(share=0.5),
        description="Verifiable instructions (IFEval's kinds, our wording) appended to the last user turn of "
        "a seeded share of the prompts; every later stage checks its answers against them (docs/judging.md).",
    )
    on_bad_file: Literal["fail", "quarantine"] = Field(
        "fail",
        description="An input file that cannot be read (corrupt Parquet, permission denied, ...): 'fail' "
        "stops before any work with the file named; 'quarantine' sets it aside (a quarantine row with "
        "row_index -1 and the reason) and goes on with the other files.",
    )

    stage: ClassVar[str] = NAME

    def fingerprint_data(self) -> Any:
        return self.model_dump(mode="json", exclude=LOCATION_FIELDS)


# ------------------------------------------------------------------------------------------ row functions


def prompt_id(messages: list[dict[str, str]]) -> str:
    """sha256 (hex) of the canonical JSON of ``messages`` (role and content only, sorted keys, no spaces,
    UTF-8): the same conversation gets the same id in every run and on every machine."""
    canonical = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = json.dumps(canonical, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_ultrafeedback(row: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    """(source, messages) of an openbmb/UltraFeedback row: its instruction as a single user turn."""
    instruction, source = row.get("instruction"), row.get("source")
    if not isinstance(instruction, str):
        raise RowError(f"instruction is {type(instruction).__name__}, not a string")
    if not isinstance(source, str) or not source.strip():
        raise RowError("column 'source' is empty or not a string")
    return f"ultrafeedback/{source.strip()}", [{"role": "user", "content": instruction}]


def normalize_ultrachat(row: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    """(source, messages) of a HuggingFaceH4/ultrachat_200k row: its messages as given (role and content)."""
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise RowError(f"messages is {type(messages).__name__}, not a list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RowError(f"message {i} is {type(m).__name__}, not an object with role and content")
        out.append({"role": m.get("role"), "content": m.get("content")})
    return "ultrachat", out


def validate_messages(messages: list[dict[str, Any]]) -> str | None:
    """Why ``messages`` cannot be used, or None. Allowed: an optional single leading system message, then
    user first and strictly alternating user/assistant; every content a non-blank, UTF-8-encodable str."""
    if not isinstance(messages, list) or not messages:
        return "no messages"
    start = 1 if messages[0].get("role") == "system" else 0
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return f"bad role {role!r} in message {i} (expected one of {', '.join(ROLES)})"
        if not isinstance(content, str):
            return f"content of message {i} is {type(content).__name__}, not a string"
        if not content.strip():
            return f"empty content in message {i}"
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (e.g. from a "\ud800" escape in JSON) cannot be written as UTF-8.
            return f"invalid UTF-8 (lone surrogate) in message {i}"
        if i < start:
            continue
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if role != expected:
            if role == "system":
                return f"system message at position {i}; only one leading system message is allowed"
            return (
                f"message {i} is {role!r}, expected {expected!r} (turns must alternate, starting with user)"
            )
    if len(messages) == start:
        return "no user turn"
    return None


def dedup_key(messages: list[dict[str, str]]) -> str:
    """The user turns' text, whitespace-normalized (hashed: the first pass keeps only this per row)."""
    users = [" ".join(m["content"].split()) for m in messages if m["role"] == "user"]
    return hashlib.sha256(json.dumps(users, ensure_ascii=False).encode("utf-8")).hexdigest()


def with_constraints(
    messages: list[dict[str, str]], cfg: ConstraintsConfig, seed: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(messages, constraints): the instructions drawn for this conversation (seeded by its id before them)
    appended to its last user turn, whose answer later stages check."""
    drawn = verifiable.draw(cfg, seed, prompt_id(messages))
    if not drawn:
        return messages, []
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    out = [dict(m) for m in messages]
    out[last]["content"] = verifiable.append(out[last]["content"], drawn)
    return out, drawn


def n_turns(messages: list[dict[str, str]]) -> int:
    return sum(1 for m in messages if m["role"] == "user")


def _printable(text: str) -> str:
    # Quarantine text must be storable as UTF-8 even when the row held lone surrogates.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# ----------------------------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class Layout:
    """What prepare needs from one dataset: the columns it reads and how a row becomes messages."""

    name: str
    columns: tuple[str, ...]
    normalize: Callable[[dict[str, Any]], tuple[str, list[dict[str, str]]]]
    expected: str


ULTRAFEEDBACK = Layout(
    "ultrafeedback",
    ("source", "instruction"),
    normalize_ultrafeedback,
    "the openbmb/UltraFeedback layout (source, instruction, models, completions, ...)",
)
ULTRACHAT = Layout(
    "ultrachat",
    ("messages",),
    normalize_ultrachat,
    "the HuggingFaceH4/ultrachat_200k layout (prompt, prompt_id, messages)",
)


@dataclass
class RawRow:
    """One input row as read: the decoded row, or the reason it could not be decoded."""

    source_file: str
    row_index: int
    row: dict[str, Any] | None
    raw: str
    error: str | None = None


def is_hub_id(path: str) -> bool:
    """A path that names no file and looks like ``owner/name`` (or ``name``) is read from the hub."""
    if storage.is_uri(path) or path.endswith(FILE_SUFFIXES) or os.path.exists(path):
        return False
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) is not None


def input_files(path: str) -> list[str]:
    """The data files of a file or folder path (sorted), or a PrepareError saying what is wrong."""
    fs, p = storage.resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        where = (
            f" (relative to {os.getcwd()})" if not storage.is_uri(path) and not os.path.isabs(path) else ""
        )
        raise PrepareError(f"{path}: no such file or folder{where}; give a hub id or an existing path")
    if info.type == pafs.FileType.File:
        if not path.endswith(FILE_SUFFIXES):
            raise PrepareError(f"{path}: unsupported file type; expected {', '.join(FILE_SUFFIXES)}")
        return [path]
    files = [f for f in storage.list_files(path) if f.endswith(FILE_SUFFIXES)]
    if not files:
        raise PrepareError(f"{path}: folder holds no {', '.join(FILE_SUFFIXES)} files")
    return files


def _missing_column(file: str, column: str, layout: Layout) -> PrepareError:
    return PrepareError(f"{file}: column {column!r} missing; expected {layout.expected}")


def _read_parquet(file: str, layout: Layout) -> Iterator[RawRow]:
    fs, p = storage.resolve(file)
    with fs.open_input_file(p) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        for col in layout.columns:
            if col not in names:
                raise _missing_column(file, col, layout)
        index = 0
        for batch in pf.iter_batches(batch_size=1024, columns=list(layout.columns)):
            for row in batch.to_pylist():
                yield RawRow(file, index, row, _printable(json.dumps(row, ensure_ascii=False, default=str)))
                index += 1


def _parse_line(file: str, index: int, line: bytes, layout: Layout) -> RawRow:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raw = line.decode("utf-8", errors="replace")
        return RawRow(
            file, index, None, raw, f"line {index} is not valid UTF-8 ({e.reason} at byte {e.start})"
        )
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return RawRow(
            file, index, None, _printable(text), f"line {index} is not valid JSON ({e.msg}, column {e.colno})"
        )
    if not isinstance(row, dict):
        return RawRow(
            file, index, None, _printable(text), f"line {index} is a JSON {type(row).__name__}, not an object"
        )
    return RawRow(file, index, row, _printable(text))


def _read_jsonl(file: str, layout: Layout, lines: Iterator[bytes] | None = None) -> Iterator[RawRow]:
    # Line by line, as bytes: a line that is not UTF-8 or not JSON is quarantined with its line number
    # instead of failing the whole file (which is what json/datasets readers do).
    fs, p = storage.resolve(file)
    with fs.open_input_stream(p) as stream:
        checked = False
        for index, line in enumerate(lines if lines is not None else io.BufferedReader(stream)):
            if not line.strip():
                continue  # blank lines (e.g. a trailing one) are not rows
            raw = _parse_line(file, index, line.rstrip(b"\r\n"), layout)
            if raw.row is not None:
                missing = [c for c in layout.columns if c not in raw.row]
                if missing and not checked:
                    # The first row decides whether this is the right dataset at all.
                    raise _missing_column(file, missing[0], layout)
                if missing:
                    raw.error = f"column {missing[0]!r} missing"
                checked = True
            yield raw


def _read_json(file: str, layout: Layout) -> Iterator[RawRow]:
    # A .json file is either one JSON list of rows or (as often on the hub) JSON Lines.
    fs, p = storage.resolve(file)
    with fs.open_input_stream(p) as stream:
        data = stream.read()
    try:
        rows = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        rows = None
    if not isinstance(rows, list):
        if isinstance(rows, dict):
            raise PrepareError(f"{file}: holds one JSON object; expected a list of rows or JSON Lines")
        yield from _read_jsonl(file, layout, iter(data.splitlines(keepends=True)))
        return
    for index, row in enumerate(rows):
        raw = _printable(json.dumps(row, ensure_ascii=False))
        if not isinstance(row, dict):
            yield RawRow(file, index, None, raw, f"row {index} is a JSON {type(row).__name__}, not an object")
            continue
        missing = [c for c in layout.columns if c not in row]
        if missing and index == 0:
            raise _missing_column(file, missing[0], layout)
        yield RawRow(file, index, row, raw, f"column {missing[0]!r} missing" if missing else None)


def unreadable(file: str) -> str | None:
    """Why a data file cannot be read (opened; for Parquet, its footer parsed), or None."""
    try:
        fs, p = storage.resolve(file)
        if file.endswith(".parquet"):
            with fs.open_input_file(p) as f:
                pq.ParquetFile(f)
        else:
            with fs.open_input_stream(p) as f:
                f.read(1)
    except (OSError, pa.ArrowException) as e:
        return f"{type(e).__name__}: {e}"
    return None


class Source:
    """One configured input. ``rows()`` can be iterated more than once and yields the same rows each time."""

    def __init__(self, layout: Layout, cfg: SourceConfig, on_bad_file: str = "fail") -> None:
        assert cfg.path is not None
        self.layout, self.cfg, self.path = layout, cfg, cfg.path
        self.hub = is_hub_id(cfg.path)
        self._dataset: Any = None
        # Check the files now, so that a wrong path or an unreadable file fails before any work is done.
        self.files, self.bad_files = [], []
        for file in [] if self.hub else input_files(cfg.path):
            reason = unreadable(file)
            if reason is None:
                self.files.append(file)
            elif on_bad_file == "quarantine":
                self.bad_files.append((file, reason))
            else:
                raise PrepareError(
                    f"{file}: cannot be read ({reason}); fix or remove it, or set on_bad_file=quarantine to "
                    "set it aside and go on with the other files"
                )
        self.label = f"{cfg.path}[{cfg.split}]" if self.hub else cfg.path

    def _load_hub(self) -> Any:
        if self._dataset is None:
            import datasets  # only hub inputs need it; it is slow to import

            try:
                ds = datasets.load_dataset(self.path, split=self.cfg.split)
            except Exception as e:  # the hub client raises many types; all mean the same to the user
                raise PrepareError(
                    f"{self.path}: could not load split {self.cfg.split!r} from the Hugging Face hub "
                    f"({type(e).__name__}: {e}). It is not a local file or folder either; check the path, "
                    "the split, and network access (HF_TOKEN for gated data)."
                ) from e
            for col in self.layout.columns:
                if col not in ds.column_names:
                    raise _missing_column(self.label, col, self.layout)
            self._dataset = ds.select_columns(list(self.layout.columns))
        return self._dataset

    def rows(self) -> Iterator[RawRow]:
        if self.hub:
            for index, row in enumerate(self._load_hub()):
                yield RawRow(
                    self.label, index, row, _printable(json.dumps(row, ensure_ascii=False, default=str))
                )
            return
        for file in self.files:
            read = (
                _read_parquet
                if file.endswith(".parquet")
                else _read_jsonl
                if file.endswith(".jsonl")
                else _read_json
            )
            try:
                yield from read(file, self.layout)
            except (OSError, pa.ArrowException) as e:  # damage past the part checked up front
                raise PrepareError(
                    f"{file}: cannot be read ({type(e).__name__}: {e}); fix or remove it"
                ) from None


def open_sources(cfg: PrepareConfig) -> list[Source]:
    """The configured inputs, UltraFeedback first (earlier rows win dedup), skipping null paths."""
    pairs = [(ULTRAFEEDBACK, cfg.ultrafeedback), (ULTRACHAT, cfg.ultrachat)]
    sources = [Source(layout, sc, cfg.on_bad_file) for layout, sc in pairs if sc.path is not None]
    if not sources:
        raise PrepareError("both ultrafeedback.path and ultrachat.path are null; set at least one")
    return sources


def to_messages(raw: RawRow, layout: Layout) -> tuple[str, list[dict[str, str]]]:
    """(source, messages) of a decoded row, or RowError with the quarantine reason."""
    if raw.error is not None or raw.row is None:
        raise RowError(raw.error or "unreadable row")
    source, messages = layout.normalize(raw.row)
    reason = validate_messages(messages)
    if reason is not None:
        raise RowError(reason)
    return source, messages


# --------------------------------------------------------------------------------------------- the passes


@dataclass
class SourceScan:
    """What the first pass learned about one source."""

    name: str
    input: str
    rows_in: int = 0
    kept: list[int] = field(default_factory=list)  # positions in rows() order of the usable rows
    drawn: list[int] | None = None  # after subset: the kept positions drawn (sorted); None = all kept
    quarantined: Counter = field(default_factory=Counter)
    files_quarantined: int = 0  # whole files that could not be read (on_bad_file=quarantine)

    @property
    def selected(self) -> list[int]:
        return self.kept if self.drawn is None else self.drawn


@dataclass
class Scan:
    sources: list[SourceScan]
    quarantine: list[dict[str, Any]]
    contaminated: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Benchmarks:
    """The n-gram index of the benchmark prompts that training prompts must not overlap."""

    index: decontaminate.NgramIndex
    labels: list[str]  # "<folder>/<file>#<row>" of every prompt (two benchmarks name it question.jsonl)

    @classmethod
    def load(cls, paths: list[str]) -> Benchmarks | None:
        if not paths:
            return None
        prompts, labels = [], []
        for path in paths:
            try:
                found = decontaminate.benchmark_prompts(path)
            except (OSError, ValueError) as e:
                raise PrepareError(f"decontaminate: {e}") from None
            prompts += found
            name = "/".join(os.path.normpath(path).split(os.sep)[-2:])
            labels += [f"{name}#{i}" for i in range(len(found))]
        return cls(decontaminate.ngram_index(prompts), labels)

    def overlap(self, messages: list[dict[str, str]]) -> list[str]:
        text = "\n".join(m["content"] for m in messages if m["role"] == "user")
        return [self.labels[j] for j in decontaminate.matches(self.index, text)]


def reason_key(reason: str) -> str:
    """Reasons grouped for the summary: every duplicate counts under 'duplicate', every contaminated prompt
    under 'contaminated'."""
    if reason.startswith("duplicate of "):
        return "duplicate"
    return "contaminated" if reason.startswith("contaminated: ") else reason


def validate_and_dedup(
    sources: list[Source],
    dedup: bool = True,
    bench: Benchmarks | None = None,
    drop_contaminated: bool = False,
) -> Scan:
    """First pass: every row is either kept (its position is remembered) or quarantined with its reason;
    kept rows that overlap a benchmark are listed (or quarantined with ``drop_contaminated``)."""
    seen: dict[str, str] = {}  # dedup key -> prompt_id of the first row with it
    quarantine: list[dict[str, Any]] = []
    contaminated: list[dict[str, Any]] = []
    scans = []
    for source in sources:
        scan = SourceScan(source.layout.name, source.label)
        for file, reason in source.bad_files:
            scan.files_quarantined += 1
            quarantine.append(
                {"source_file": file, "row_index": -1, "reason": f"unreadable file: {reason}", "raw": ""}
            )
        for position, raw in enumerate(source.rows()):
            scan.rows_in += 1
            try:
                _, messages = to_messages(raw, source.layout)
            except RowError as e:
                reason: str | None = str(e)
            else:
                reason = None
                if dedup:
                    key = dedup_key(messages)
                    if key in seen:
                        reason = f"duplicate of {seen[key]}"
                    else:
                        seen[key] = prompt_id(messages)
                hits = bench.overlap(messages) if bench is not None and reason is None else []
                if hits:
                    contaminated.append(
                        {
                            "prompt_id": prompt_id(messages),
                            "source": raw.source_file,
                            "row_index": raw.row_index,
                            "benchmarks": hits,
                        }
                    )
                    if drop_contaminated:
                        reason = f"contaminated: shares a 13-word span with {', '.join(hits[:5])}"
            if reason is None:
                scan.kept.append(position)
                continue
            scan.quarantined[reason_key(reason)] += 1
            quarantine.append(
                {"source_file": raw.source_file, "row_index": raw.row_index, "reason": reason, "raw": raw.raw}
            )
        scans.append(scan)
    return Scan(scans, quarantine, contaminated)


def draw_subsets(scan: Scan, cfg: PrepareConfig) -> None:
    """Draw each source's subset from its kept rows. The generator is seeded with the seed and the source
    name, so the draw depends only on (seed, source, kept rows) and two sources do not share a pattern."""
    limits = {"ultrafeedback": cfg.ultrafeedback.subset, "ultrachat": cfg.ultrachat.subset}
    for s in scan.sources:
        limit = limits[s.name]
        if limit is not None and len(s.kept) > limit:
            rng = random.Random(f"{cfg.seed}:{s.name}")
            s.drawn = sorted(rng.sample(s.kept, limit))


def _shard_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def write_shards(
    sources: list[Source],
    scan: Scan,
    out: str,
    rows_per_shard: int,
    constraints: ConstraintsConfig | None = None,
    seed: int = 0,
) -> tuple[dict[str, int], int, dict[str, int]]:
    """Second pass: re-read the selected rows and write them as prompts shards, with their instructions
    appended. Returns ({relative path: rows}, prompts given instructions, {instruction kind: prompts}).
    Shards are filled in input order (UltraFeedback first), so a rerun writes the same files."""
    prompts_dir = storage.join(out, "prompts")
    storage.remove(prompts_dir)  # shards of an interrupted earlier attempt must not mix with these
    shards: dict[str, int] = {}
    kinds: Counter = Counter()
    constrained = 0
    buffer: list[dict[str, Any]] = []

    def flush() -> None:
        name = _shard_name(len(shards))
        storage.write_parquet(schemas.to_table(buffer, "prompts"), storage.join(prompts_dir, name))
        shards[f"prompts/{name}"] = len(buffer)
        buffer.clear()

    for source, s in zip(sources, scan.sources):
        wanted = set(s.selected)
        for position, raw in enumerate(source.rows()):
            if position not in wanted:
                continue
            src, messages = to_messages(raw, source.layout)  # valid: the first pass kept it
            drawn: list[dict[str, str]] = []
            if constraints is not None:
                messages, drawn = with_constraints(messages, constraints, seed)
                kinds.update(c["id"] for c in drawn)
                constrained += bool(drawn)
            buffer.append(
                {
                    "prompt_id": prompt_id(messages),
                    "source": src,
                    "messages": messages,
                    "n_turns": n_turns(messages),
                    "constraints": drawn,
                }
            )
            if len(buffer) == rows_per_shard:
                flush()
    if buffer:
        flush()
    return shards, constrained, dict(sorted(kinds.items()))


def write_quarantine(scan: Scan, out: str) -> str:
    """``quarantine.parquet``, written even when empty so that readers never have to guess."""
    path = storage.join(out, "quarantine.parquet")
    storage.write_parquet(schemas.to_table(scan.quarantine, "quarantine"), path)
    return path


def accounting(scan: Scan, shards: dict[str, int]) -> dict[str, Any]:
    """The stage's numbers: for every source rows_in = rows_out + quarantined + not_sampled."""
    per_source = {}
    by_reason: Counter = Counter()
    for s in scan.sources:
        q = sum(s.quarantined.values())
        per_source[s.name] = {
            "input": s.input,
            "rows_in": s.rows_in,
            "rows_out": len(s.selected),
            "quarantined": q,
            "files_quarantined": s.files_quarantined,
            "not_sampled": len(s.kept) - len(s.selected),
            "quarantined_by_reason": dict(sorted(s.quarantined.items())),
        }
        by_reason.update(s.quarantined)
    return {
        "sources": per_source,
        "rows_in": sum(v["rows_in"] for v in per_source.values()),
        "rows_out": sum(shards.values()),
        "quarantined": sum(v["quarantined"] for v in per_source.values()),
        "files_quarantined": sum(v["files_quarantined"] for v in per_source.values()),
        "not_sampled": sum(v["not_sampled"] for v in per_source.values()),
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "shards": len(shards),
        "contaminated": len(scan.contaminated),
    }


class SourceNumbers(Config):
    """One source's accounting: rows_in = rows_out + quarantined + not_sampled."""

    input: str = Field("", description="What was read (hub id or path).")
    rows_in: int = Field(0, description="Rows read.")
    rows_out: int = Field(0, description="Rows in the prompts shards.")
    quarantined: int = Field(0, description="Rows set aside with their reason.")
    files_quarantined: int = Field(0, description="Unreadable files set aside (on_bad_file=quarantine).")
    not_sampled: int = Field(0, description="Valid rows the subset did not draw.")
    quarantined_by_reason: dict[str, int] = Field(
        default_factory=dict, description="Quarantined rows per reason."
    )


class PrepareMetrics(StageMetrics):
    sources: dict[str, SourceNumbers] = Field(default_factory=dict, description="Per source, by name.")
    rows_in: int = Field(0, description="Rows read over all sources.")
    rows_out: int = Field(0, description="Prompts passed on.")
    quarantined: int = Field(0, description="Rows set aside with their reason.")
    files_quarantined: int = Field(0, description="Unreadable files set aside.")
    not_sampled: int = Field(0, description="Valid rows no subset drew.")
    quarantined_by_reason: dict[str, int] = Field(
        default_factory=dict, description="Quarantined rows per reason."
    )
    shards: int = Field(0, description="Prompts shards written.")
    contaminated: int = Field(0, description="Prompts sharing a 13-word span with a benchmark prompt.")
    constrained: int = Field(0, description="Prompts given verifiable instructions (constraints).")
    constraint_kinds: dict[str, int] = Field(
        default_factory=dict, description="Prompts per instruction kind (a prompt may have several)."
    )


class Prepare(Stage[PrepareConfig, PrepareMetrics]):
    name = NAME
    config = PrepareConfig
    metrics = PrepareMetrics

    def work(self, work: Work, pools: Any = None) -> Outcome:
        """read -> validate and dedup (first pass) -> subset -> shard (second pass) -> quarantine."""
        cfg, out = work.cfg, work.out
        assert isinstance(cfg, PrepareConfig)
        sources = open_sources(cfg)  # paths checked before the output folder is touched
        bench = Benchmarks.load(cfg.decontaminate)
        manifest = work.open_manifest()
        scan = validate_and_dedup(sources, cfg.dedup, bench, cfg.drop_contaminated)
        draw_subsets(scan, cfg)
        shards, constrained, kinds = write_shards(
            sources, scan, out, cfg.rows_per_shard, cfg.constraints, cfg.seed
        )
        quarantine = write_quarantine(scan, out)
        outputs = {"prompts": storage.join(out, "prompts"), "quarantine": quarantine}
        if cfg.decontaminate:
            outputs["contamination"] = storage.join(out, "contamination.json")
            storage.write_json(outputs["contamination"], scan.contaminated)
        numbers = accounting(scan, shards)
        numbers["constrained"] = constrained
        numbers["constraint_kinds"] = kinds
        if numbers["rows_out"] == 0:
            raise PrepareError(
                f"no prompts to pass on: all {numbers['rows_in']} input rows were quarantined "
                f"({numbers['quarantined_by_reason'] or 'no rows read'}"
                + (
                    f", {numbers['files_quarantined']} unreadable file(s)"
                    if numbers["files_quarantined"]
                    else ""
                )
                + f"); see {quarantine}"
            )
        # Shard paths are relative to the folder, so that it can be moved or copied.
        manifest["shards"] = {path: {"rows": rows} for path, rows in shards.items()}
        return Outcome(
            manifest,
            rows=numbers["rows_out"],
            errors=numbers["quarantined"],
            outputs=outputs,
            metrics=PrepareMetrics.model_validate(numbers),
            usable=numbers["rows_out"],
        )

    def one_line(self, s: Summary) -> str:
        m = self.read(s)
        order = [n for n in ("ultrafeedback", "ultrachat") if n in m.sources]  # summary.json sorts its keys
        parts = ", ".join(f"{m.sources[k].rows_out} {k}" for k in order)
        sampled = f", {m.not_sampled} not drawn by subset" if m.not_sampled else ""
        tagged = f", {m.constrained} with verifiable instructions" if m.constrained else ""
        return (
            f"prepare: {s.rows} prompts in {m.shards} shards ({parts}){tagged}, {s.errors} quarantined"
            f"{sampled} -> "
            f"{posixpath.dirname(s.outputs['prompts'])}"
        )

    def key_numbers(self, s: Summary) -> str:
        m = self.read(s)
        of = f" of {num(m.rows_in)}" if m.rows_in else ""
        tagged = f", {num(m.constrained)} with verifiable instructions" if m.constrained else ""
        return f"{num(m.rows_out or s.rows)} prompts{of}{tagged}, {num(s.errors)} quarantined"


STAGE = Prepare()
run = STAGE.run
one_line = STAGE.one_line
