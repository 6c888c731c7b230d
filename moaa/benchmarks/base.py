"""The one interface of a benchmark (``Benchmark``) and what the benchmark modules share in the driver: a
benchmark file read from a path or URI with errors that name the setting and the fix.

A benchmark is one module (``mt_bench.py`` ...: its config section, the reader of its published files, how
its items are answered, its judge prompt and verdict parser, its score) plus one entry in
``registry.BENCHMARKS``; ``moaa.stages.evaluate`` runs every benchmark through this interface and names none.

The rows the methods see, as the evaluate stage keeps them:

- an item (``items``): ``{question_id, category, turns, reference, switched}``, one question: ``turns`` the
  user turns the model answers one pass each, ``reference`` the answers it is judged against (if any),
  ``switched`` whether the judge reads the model's answer where it would read the reference's;
- a state: the item plus ``benchmark``, ``model``, ``answers`` (one per turn answered), ``judgments``, ...;
- a judgment (``winner``, ``score``): a row of schema eval_judgments (``turn``, ``game``, ``verdict``,
  ``score``, ``score_from``, ``shown_first``, ...); ``finals`` are the judgments that count.
"""

from __future__ import annotations

import posixpath
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from moaa.benchmarks.files import DEFAULT_DIR, SAMPLE_DIR, fetch_command
from moaa.core import storage
from moaa.core.config import Config, UserError
from moaa.engine.settings import Completion, SamplingConfig

Messages = list[dict[str, str]]
Key = tuple[int, int]  # (turn, game) of one judgment; game 0 where a benchmark has one game per turn
Verdict = tuple[str | None, float | None, str | None]  # (verdict, score, score_from) of one judge output
Section = TypeVar("Section", bound=Config)


class BenchmarkFileError(UserError, ValueError):
    """A benchmark file that is missing or not in its published layout; the message names it and the fix."""


class Benchmark(ABC, Generic[Section]):
    """A benchmark as the evaluate stage runs it: read its items, answer them, judge the answers, score.

    Every benchmark reads its items and scores them (``items``, ``score``); a judged one (``judged = True``)
    also says which judgments a row needs and how each is asked and parsed. A benchmark scored by code sets
    nothing of the judge part: it gets no judge step, and ``score`` gets no final judgments.
    """

    name: ClassVar[str]  # its config section (``mt_bench:``), results' ``benchmark``, output folders
    config: ClassVar[type[Config]]  # the class of its config section (the section's default is its default)
    description: ClassVar[str]  # the section's description in the evaluate config
    # The pipeline's embedded default evaluates every round, on a smaller slice than the evaluate job's own
    # default: these fields of the section (validated by it) set that slice; empty: the section's default.
    pipeline_slice: ClassVar[dict[str, Any]] = {}

    # ------------------------------------------------------------------------------- items and answers

    @abstractmethod
    def items(self, section: Section) -> list[dict[str, Any]]:
        """Its items, read from its files (``read_file``) and checked (``check_enough``) in the driver."""

    @abstractmethod
    def source(self, section: Section) -> str:
        """The file its items come from (a shard's source)."""

    def check_files(self, section: Section) -> None:
        """Files read after answering and judging, checked before anything starts (none by default)."""

    def taken_names(self, section: Section) -> set[str]:
        """Model names its results use for others (an evaluated model must not take one)."""
        return set()

    def order_switched(self, instruction: str, seed: int) -> bool:
        """Whether a row's judge reads the model's answer first (see ``items``' ``switched``)."""
        return False

    def answer_sampling(
        self, section: Section, state: dict[str, Any], base: SamplingConfig
    ) -> SamplingConfig:
        """A row's answer sampling: the model's own (``base``) unless the benchmark sets its own."""
        return base

    # ----------------------------------------------------------------------------- judge (judged ones)

    judged: ClassVar[bool] = False
    judge_prompts: ClassVar[tuple[str, ...]] = ()  # its judge prompts, in the evaluate config's fingerprint
    judge_logprobs: ClassVar[int | None] = None  # top logprobs of a judge output's first token it reads
    # The user turn that sends a free judgment without a verdict back once (``unfinished``); None: never.
    continuation: ClassVar[str | None] = None

    def judge_keys(self, state: dict[str, Any]) -> list[Key]:
        """The judgments an answered row needs now."""
        return []

    def judge_messages(self, state: dict[str, Any], turn: int, game: int) -> Messages:
        """The benchmark's own judge prompt for one judgment."""
        raise NotImplementedError(f"{self.name} has no judge")

    def shown_first(self, state: dict[str, Any], game: int) -> str | None:
        """Whose answer the judge reads first ('model' or 'reference'); None: one answer at a time."""
        return None

    def parse(self, c: Completion, switched: bool) -> Verdict:
        """(verdict, score, score_from) of one judge output; all None when it does not parse."""
        raise NotImplementedError(f"{self.name} has no judge")

    def judge_format(self, max_chars: int) -> tuple[dict[str, Any], int]:
        """(vLLM structured-output constraint, max_tokens) of a constrained judge (see ``explained``)."""
        raise NotImplementedError(f"{self.name} has no judge")

    def free_format(self, max_tokens: int) -> tuple[dict[str, Any] | None, int]:
        """(constraint, max_tokens) of an unconstrained judge: free text of its own max_tokens."""
        return None, max_tokens

    def unfinished(self, raw: str) -> bool:
        """Whether a free judgment is to be sent back once with ``continuation``."""
        return False

    def winner(self, judgment: dict[str, Any]) -> str | None:
        """'model', 'reference' or 'tie' for a parsed final judgment (None: no verdict, or none to win)."""
        return None

    def position_stats(self, finals: list[dict[str, Any]]) -> dict[str, float | None]:
        """``first_position_rate``: of the decisive final judgments, the share won by the answer shown first
        (0.5 for a judge without position bias, since the order is balanced or random);
        ``position_consistency``: None here (a benchmark that shows both orders of a question says it)."""
        decided = [(j, w) for j in finals if (w := self.winner(j)) in ("model", "reference")]
        first = sum(w == j["shown_first"] for j, w in decided)
        return {
            "first_position_rate": first / len(decided) if decided else None,
            "position_consistency": None,
        }

    # ------------------------------------------------------------------------------------------- score

    @abstractmethod
    def score(
        self,
        section: Section,
        finals: list[dict[str, Any]],
        answers: list[dict[str, Any]],
        *,
        model: str,
        bootstrap: int,
        ci: float,
    ) -> dict[str, Any]:
        """One model's result from its final judgments and its answer rows: ``metric``, ``score``, ``lower``
        and ``upper`` (at ``ci``, from ``bootstrap`` resamples where the benchmark bootstraps),
        ``standard_error``, ``judged``, ``unparsed``, ``details`` (JSON), optionally ``note`` and
        ``lc_win_rate``; a benchmark scored by code, optionally ``judge``: what scored it, in words."""


def explained(verdict: str, max_chars: int) -> tuple[dict[str, Any], int]:
    """A constrained judge's format: an explanation of at most ``max_chars`` characters without brackets,
    then the ``verdict`` regex (so the parser always finds it), and the max_tokens that leaves room."""
    # A character is at most 4 tokens (byte-level BPE on 4-byte UTF-8), plus the fixed text.
    return {"regex": r"[^\[\]]{0," + str(max_chars) + "}" + verdict}, 4 * max_chars + 32


# ----------------------------------------------------------------------------------- benchmark files


def local_copy(path: str) -> str:
    """A local path for a local file; a URI's (small) file copied next to the driver (the readers take
    local files)."""
    if not storage.is_uri(path):
        return path
    fs, p = storage.resolve(path)
    with (
        fs.open_input_stream(p) as f,
        tempfile.NamedTemporaryFile(delete=False, suffix=posixpath.basename(p)) as t,
    ):
        t.write(f.read())
    return t.name


def read_file(reader: Callable[..., Any], path: str, key: str, *args: Any) -> Any:
    """Run a benchmark file reader on a local path or a URI, turning failures into messages that name the
    setting (``key``, e.g. ``arena_hard.questions``) and the fix."""
    if not storage.exists(path):
        raise BenchmarkFileError(
            f"{key}: benchmark file {path} not found: `{fetch_command(path)}` fetches the published files "
            f"(pinned, sha256-checked; --from <folder> copies them from a mirror), or set {key}=<path or "
            f"URI>; {key.split('.')[0]}=null skips that benchmark"
        )
    try:
        return reader(local_copy(path), *args)
    except (ValueError, KeyError, TypeError) as e:
        raise BenchmarkFileError(
            f"{key}: {e} (expected the published layout, see moaa/benchmarks/)"
        ) from None


def check_enough(key: str, path: str, asked: int | None, got: int, unit: str) -> None:
    """A selection larger than its file is an error rather than a silently smaller benchmark; the shipped
    excerpt holds a few questions, and the message says how to get the published files instead."""
    rel = path.replace("\\", "/")
    excerpt = f"{SAMPLE_DIR}/" in rel or rel.startswith(f"{SAMPLE_DIR}/")
    if got >= (asked or 0) and not (asked is None and excerpt):
        return
    wanted = "all of them" if asked is None else f"{asked} asked"
    if excerpt:
        full = f"{DEFAULT_DIR}/{rel.split(SAMPLE_DIR + '/', 1)[-1]}"
        fix = (
            "it is the shipped excerpt: `moaa fetch-benchmarks` puts the published files in "
            f"{DEFAULT_DIR}/, then set {key}={full}"
        )
    else:
        fix = "ask for fewer"
    raise BenchmarkFileError(f"{key}: {path} holds {got} {unit}, {wanted}: {fix}")
