"""The public benchmark files the ``evaluate`` job reads, put into a local folder, pinned and checked.

Five files, each a byte-exact copy of a file of a public GitHub repository at a fixed commit (see ``FILES``;
the same copies, with the same local names, are listed in ``../shared/data/SOURCES.md``):

- MT-Bench questions and GPT-4 reference answers (lm-sys/FastChat),
- Arena-Hard v0.1 questions and the gpt-4-0314 baseline answers (lmarena/arena-hard-auto),
- the AlpacaEval 2 reference outputs of gpt4_1106_preview (tatsu-lab/alpaca_eval).

They go to ``data/benchmarks/`` by default (``<dir>/mt_bench/question.jsonl``, ...), the folder ``evaluate``
reads. A file already there with the right sha256 is left alone; any other is taken from the first source
that gives it with the right sha256 and written atomically. A source is

- ``github`` (the default): ``https://raw.githubusercontent.com/<repo>/<commit>/<path in repo>``;
- another ``http(s)://`` base URL: ``<base>/<local path>``, an in-house HTTP mirror of this layout;
- a local folder with this layout, e.g. a copy of ``../shared/data``.

    moaa fetch-benchmarks                                   # from GitHub into data/benchmarks
    moaa fetch-benchmarks data/benchmarks --from ../shared/data --from github
    python -m moaa.benchmarks.files DIR --from SOURCE ...
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from moaa.core.config import UserError

DEFAULT_DIR = "data/benchmarks"
# The excerpt the embedded default evaluates on, shipped so that `make demo` needs no network (excerpt()).
SAMPLE_DIR = "data/samples/benchmarks"
EXCERPT_MT_BENCH_PER_CATEGORY = 2  # 16 of 80 questions (the demo asks 1 per category)
EXCERPT_ARENA_HARD = 8  # of 500 (the demo asks 4)
EXCERPT_ALPACA_EVAL = 16  # of 805 (the demo asks 4 to 8)
EXCERPT_IFEVAL = 16  # of 541, covering all 25 instruction kinds (the demo asks 8)
DEFAULT_SOURCES = ("github",)
GITHUB_RAW = "https://raw.githubusercontent.com"
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BenchmarkFile:
    local: str  # path under the benchmark folder (and under a mirror), "/"-separated
    repo: str  # GitHub owner/name
    path: str  # path in the repository
    commit: str
    sha256: str
    size: int  # bytes

    def github_url(self) -> str:
        return f"{GITHUB_RAW}/{self.repo}/{self.commit}/{urllib.parse.quote(self.path)}"


_FASTCHAT = ("lm-sys/FastChat", "0e6d3e4beaab66f4d3f93db72541a4abab8af28d")
_ARENA_HARD = ("lmarena/arena-hard-auto", "196f6b826783b3da7310e361a805fa36f0be83f3")
_ALPACA_EVAL = ("tatsu-lab/alpaca_eval", "cd543a149df89434d8a54582c0151c0b945c3d20")
_GOOGLE_RESEARCH = ("google-research/google-research", "19638399cc9e03623c5b9087a1d6fa8813974ce9")

FILES: tuple[BenchmarkFile, ...] = (
    BenchmarkFile(
        "mt_bench/question.jsonl",
        _FASTCHAT[0],
        "fastchat/llm_judge/data/mt_bench/question.jsonl",
        _FASTCHAT[1],
        "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
        48929,
    ),
    BenchmarkFile(
        "mt_bench/reference_answer_gpt-4.jsonl",
        _FASTCHAT[0],
        "fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl",
        _FASTCHAT[1],
        "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f",
        51109,
    ),
    BenchmarkFile(
        "arena_hard/question.jsonl",
        _ARENA_HARD[0],
        "data/arena-hard-v0.1/question.jsonl",
        _ARENA_HARD[1],
        "2650242d2883f22b2abd498f273b6a7e02253cce533f5c91a858e1d44aa3002f",
        272075,
    ),
    BenchmarkFile(
        "arena_hard/model_answer_gpt-4-0314.jsonl",
        _ARENA_HARD[0],
        "data/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl",
        _ARENA_HARD[1],
        "0f6abc84de4600fde987d9db70f838f4ecdbd27a2f1f4058c12aa322a6f791b2",
        1270631,
    ),
    BenchmarkFile(
        "alpaca_eval/gpt4_1106_preview.model_outputs.json",
        _ALPACA_EVAL[0],
        "results/gpt4_1106_preview/model_outputs.json",
        _ALPACA_EVAL[1],
        "83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4",
        1899765,
    ),
    BenchmarkFile(
        "ifeval/input_data.jsonl",
        _GOOGLE_RESEARCH[0],
        "instruction_following_eval/data/input_data.jsonl",
        _GOOGLE_RESEARCH[1],
        "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49",
        207111,
    ),
)

FIX = (
    "fix: pass --from <folder> holding a copy of the files in this layout (e.g. a copy of ../shared/data; "
    "--from can be given more than once), or give this machine network access to "
    "raw.githubusercontent.com (--from github, the default)"
)


class BenchmarkFetchError(UserError, RuntimeError):
    """A benchmark file that no source gave with the right checksum, or a source that cannot be used."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def has_right_copy(dest: str | Path, f: BenchmarkFile) -> bool:
    """Whether ``dest`` holds ``f`` with its size and sha256."""
    p = Path(dest) / f.local
    try:
        return p.stat().st_size == f.size and _sha256(p.read_bytes()) == f.sha256
    except OSError:
        return False


def missing(dest: str | Path) -> list[BenchmarkFile]:
    """The files of ``FILES`` that ``dest`` lacks or holds with a wrong checksum."""
    return [f for f in FILES if not has_right_copy(dest, f)]


def fetch_command(path: str) -> str:
    """The command that puts the published file ``path`` where it is expected: ``moaa fetch-benchmarks
    <its folder>`` when ``path`` ends in a published file's place in that layout."""
    for f in FILES:
        if path.replace("\\", "/").endswith("/" + f.local) or path == f.local:
            folder = path[: -len(f.local)].rstrip("/") or "."
            return f"moaa fetch-benchmarks {folder}"
    return "moaa fetch-benchmarks"


def _check_sources(sources: Sequence[str]) -> None:
    if isinstance(sources, str):
        raise TypeError("sources is a list of sources, not one string")
    if not sources:
        raise BenchmarkFetchError(f"no source given to fetch the benchmark files from\n{FIX}")
    for s in sources:
        if s == "github" or s.startswith(("http://", "https://")):
            continue
        if "://" in s:
            raise BenchmarkFetchError(
                f"source {s!r}: unknown kind; a source is 'github', an http(s):// base URL or a local folder"
            )
        if not Path(s).expanduser().is_dir():
            raise BenchmarkFetchError(
                f"source {s!r}: no such folder (a local source is a folder holding the files in the "
                f"layout of {DEFAULT_DIR}/, e.g. mt_bench/question.jsonl)\n{FIX}"
            )


def _location(source: str, f: BenchmarkFile) -> str:
    if source == "github":
        return f.github_url()
    if source.startswith(("http://", "https://")):
        return f"{source.rstrip('/')}/{urllib.parse.quote(f.local)}"
    return str(Path(source).expanduser() / f.local)


def _read(source: str, f: BenchmarkFile, timeout: float) -> tuple[bytes | None, str, bool]:
    """(the bytes, "", False) or (None, why not, whether the source could not be reached at all)."""
    where = _location(source, f)
    if source == "github" or source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(where, timeout=timeout) as resp:
                # one byte more than expected is enough to see that the size is wrong
                data = resp.read(f.size + 1)
        except urllib.error.HTTPError as e:
            if e.code in (404, 410):
                return None, f"not found ({where}: HTTP {e.code})", False
            return None, f"network error ({where}: HTTP {e.code} {e.reason})", False
        except urllib.error.URLError as e:
            return None, f"network error ({where}: {e.reason})", True
        except OSError as e:  # timeouts, connection resets
            return None, f"network error ({where}: {e})", True
        except (ValueError, http.client.HTTPException) as e:  # a cut transfer, a malformed URL
            return None, f"network error ({where}: {e!r})", False
    else:
        try:
            with open(where, "rb") as fh:
                data = fh.read(f.size + 1)
        except FileNotFoundError:
            return None, f"not found ({where})", False
        except OSError as e:
            return None, f"cannot read {where}: {e}", False
    digest = _sha256(data)
    if len(data) != f.size or digest != f.sha256:
        got = f"{len(data)} bytes" if len(data) <= f.size else f"more than {f.size} bytes"
        why = (
            f"checksum mismatch ({where}: {got}, sha256 {digest}; expected {f.size} bytes, sha256 {f.sha256})"
        )
        return None, why, False
    return data, "", False


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fetch(
    dest: str | Path,
    sources: Sequence[str] = DEFAULT_SOURCES,
    *,
    timeout: float = TIMEOUT_S,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Put every file of ``FILES`` into ``dest`` (same layout) and return their paths.

    A file already in ``dest`` with the right sha256 is kept; any other is read from the first of
    ``sources`` that gives it with the right size and sha256, and written atomically. ``log`` gets one line
    per file. Raises ``BenchmarkFetchError`` naming every file no source could give, each source tried and
    why it failed; the files that could be fetched are kept."""
    _check_sources(sources)
    dest = Path(dest).expanduser()
    paths: list[Path] = []
    failures: list[str] = []
    unreachable: set[str] = set()  # sources that gave a network error: not tried again for the next files
    for f in FILES:
        target = dest / f.local
        paths.append(target)
        if has_right_copy(dest, f):
            if log:
                log(f"{f.local}: already there")
            continue
        replaced = target.exists()
        tried: list[str] = []
        for source in sources:
            if source in unreachable:
                tried.append(f"    --from {source}: not tried (network error on an earlier file)")
                continue
            data, why, down = _read(source, f, timeout)
            if down:
                unreachable.add(source)
            if data is None:
                tried.append(f"    --from {source}: {why}")
                continue
            _write_atomically(target, data)
            if log:
                note = " (replaced a copy with a wrong checksum)" if replaced else ""
                log(f"{f.local}: fetched from {source}{note}")
            break
        else:
            failures.append(
                f"  {f.local} ({f.repo} @ {f.commit}: {f.path}; {f.size} bytes, sha256 {f.sha256}):\n"
                + "\n".join(tried)
            )
            if log:
                log(f"{f.local}: FAILED")
    if failures:
        n = len(failures)
        raise BenchmarkFetchError(
            f"could not get {n} of {len(FILES)} benchmark file{'s' if n > 1 else ''} into {dest} "
            "with the right checksum; sources tried:\n" + "\n".join(failures) + f"\n{FIX}"
        )
    return paths


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def _json_list_prefix(text: str, n: int) -> str:
    """The first ``n`` rows of a JSON list as they are written in ``text`` (same bytes), closed again."""
    decoder = json.JSONDecoder()
    end = text.index("[") + 1
    for _ in range(n):
        start = end + (len(text[end:]) - len(text[end:].lstrip(", \n\r\t")))
        _, end = decoder.raw_decode(text, start)
    return text[:end] + "\n]\n"


def _covering(lines: list[str], n: int) -> list[str]:
    """``n`` IFEval prompts (lines of input_data.jsonl, in file order) that cover as many instruction kinds
    as they can: greedily the prompt that brings the most kinds not yet taken (the first in file order of
    those that bring as many), until every kind is in, then the first prompts not taken."""
    ids = [set(json.loads(line)["instruction_id_list"]) for line in lines]
    taken: list[int] = []
    kinds: set[str] = set()
    while len(taken) < n:
        gain, i = max((len(k - kinds), -i) for i, k in enumerate(ids))
        if gain == 0:
            break
        taken.append(-i)
        kinds |= ids[-i]
    rest = [i for i in range(len(lines)) if i not in set(taken)]
    return [lines[i] for i in sorted(taken + rest[: n - len(taken)])]


def excerpt(full: str | Path, dest: str | Path = SAMPLE_DIR) -> list[Path]:
    """Write the shipped excerpt of the benchmark files in ``full`` (a folder of ``FILES``, checked by
    sha256) into ``dest``, same layout, every row a byte-exact copy of the published one: MT-Bench's first
    questions of each category (file order) with their GPT-4 references, Arena-Hard's first questions with
    the baseline's answers to them, AlpacaEval's first instructions with the reference outputs, IFEval prompts
    that cover every instruction kind (``_covering``). The readers
    and the evaluate job take the excerpt as they take the full files."""
    full, dest = Path(full), Path(dest)
    wrong = missing(full)
    if wrong:
        raise BenchmarkFetchError(
            f"{full} lacks (or holds another version of) {', '.join(f.local for f in wrong)}\n{FIX}"
        )
    out: dict[str, str] = {}
    taken: dict[str, int] = {}
    questions = []
    for line in _lines(full / "mt_bench/question.jsonl"):
        cat = json.loads(line)["category"]
        if taken.get(cat, 0) < EXCERPT_MT_BENCH_PER_CATEGORY:
            taken[cat] = taken.get(cat, 0) + 1
            questions.append(line)
    out["mt_bench/question.jsonl"] = "".join(questions)
    ids = {json.loads(q)["question_id"] for q in questions}
    refs = _lines(full / "mt_bench/reference_answer_gpt-4.jsonl")
    out["mt_bench/reference_answer_gpt-4.jsonl"] = "".join(
        r for r in refs if json.loads(r)["question_id"] in ids
    )
    arena = _lines(full / "arena_hard/question.jsonl")[:EXCERPT_ARENA_HARD]
    out["arena_hard/question.jsonl"] = "".join(arena)
    uids = {json.loads(q)["uid"] for q in arena}
    answers = _lines(full / "arena_hard/model_answer_gpt-4-0314.jsonl")
    out["arena_hard/model_answer_gpt-4-0314.jsonl"] = "".join(
        a for a in answers if json.loads(a)["uid"] in uids
    )
    alpaca = "alpaca_eval/gpt4_1106_preview.model_outputs.json"
    out[alpaca] = _json_list_prefix((full / alpaca).read_text(encoding="utf-8"), EXCERPT_ALPACA_EVAL)
    out["ifeval/input_data.jsonl"] = "".join(
        _covering(_lines(full / "ifeval/input_data.jsonl"), EXCERPT_IFEVAL)
    )
    paths = []
    for local, text in out.items():
        _write_atomically(dest / local, text.encode("utf-8"))
        paths.append(dest / local)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="moaa fetch-benchmarks",
        description="Put the public benchmark files the evaluate job reads into DIR, pinned to fixed "
        "commits and checked by sha256.",
    )
    parser.add_argument("dir", nargs="?", default=DEFAULT_DIR, metavar="DIR", help=f"default {DEFAULT_DIR}")
    parser.add_argument(
        "--from",
        dest="sources",
        action="append",
        metavar="SOURCE",
        help="where to take the files from, tried in order (repeatable): 'github' (the default: "
        "raw.githubusercontent.com at the pinned commits), an http(s):// base URL of a mirror, or a local "
        "folder with the same layout (e.g. ../shared/data)",
    )
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, help=f"seconds per HTTP request (default {TIMEOUT_S:g})"
    )
    args = parser.parse_args(argv)
    sources = args.sources or list(DEFAULT_SOURCES)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    try:
        fetch(args.dir, sources, timeout=args.timeout, log=log)
    except BenchmarkFetchError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    n_fetched = sum(": fetched from " in line for line in lines)
    print(
        f"{len(FILES)} benchmark files checked in {args.dir} "
        f"({n_fetched} fetched, {len(FILES) - n_fetched} already there)"
    )


if __name__ == "__main__":
    main()
