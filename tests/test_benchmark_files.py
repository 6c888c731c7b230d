"""moaa.benchmarks.files and ``moaa fetch-benchmarks`` against the real benchmark files: from the shared data
folder beside the checkout (see its SOURCES.md), from a corrupted or partial copy of it, and over HTTP from
a server on 127.0.0.1. Nothing here reaches the internet; the tests skip when the shared folder is missing."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from moaa.benchmarks import files as BF
from moaa.core.config import UserError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
MOAA = ROOT / ".venv" / "bin" / "moaa"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark files not found at {DATA}")


def _copy_mirror(dst: Path) -> Path:
    for f in BF.FILES:
        (dst / f.local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / f.local, dst / f.local)
    return dst


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A private copy of the published files, to break."""
    return _copy_mirror(tmp_path / "mirror")


@pytest.fixture
def http_mirror(tmp_path: Path, monkeypatch) -> Iterator[str]:
    """A base URL served by http.server on 127.0.0.1 from a copy of the published files."""
    root = _copy_mirror(tmp_path / "served")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _assert_all_right(dest: Path) -> None:
    for f in BF.FILES:
        data = (dest / f.local).read_bytes()
        assert data == (DATA / f.local).read_bytes(), f.local
        assert len(data) == f.size and hashlib.sha256(data).hexdigest() == f.sha256, f.local
    assert not list(dest.rglob("*.tmp")), "a temporary file was left behind"


def test_table_matches_the_shared_copies_and_sources_md() -> None:
    sources_md = (DATA / "SOURCES.md").read_text()
    assert len(BF.FILES) == 6 and len({f.local for f in BF.FILES}) == 6
    for f in BF.FILES:
        data = (DATA / f.local).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f.size, f.sha256), f.local
        assert f"| {f.local} | {f.repo} | {f.path} |" in sources_md, f.local
        assert f.commit in sources_md and len(f.commit) == 40
        assert f.github_url() == f"https://raw.githubusercontent.com/{f.repo}/{f.commit}/{f.path}"


def test_fetch_from_mirror_then_nothing_to_copy(tmp_path: Path) -> None:
    dest = tmp_path / "bench"
    lines: list[str] = []
    paths = BF.fetch(dest, [str(DATA)], log=lines.append)
    assert paths == [dest / f.local for f in BF.FILES]
    _assert_all_right(dest)
    assert lines == [f"{f.local}: fetched from {DATA}" for f in BF.FILES]
    assert BF.missing(dest) == []

    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    lines.clear()
    # a second fetch copies nothing and rewrites nothing
    BF.fetch(dest, [str(DATA)], log=lines.append)
    assert lines == [f"{f.local}: already there" for f in BF.FILES]
    assert {p: p.stat().st_mtime_ns for p in paths} == mtimes


def test_wrong_copy_in_dest_is_replaced(tmp_path: Path) -> None:
    dest = _copy_mirror(tmp_path / "bench")
    bad = BF.FILES[2]
    (dest / bad.local).write_bytes(b"not the file\n")
    assert BF.missing(dest) == [bad]
    lines: list[str] = []
    BF.fetch(dest, [str(DATA)], log=lines.append)
    assert f"{bad.local}: fetched from {DATA} (replaced a copy with a wrong checksum)" in lines
    assert sum(line.endswith("already there") for line in lines) == len(BF.FILES) - 1
    _assert_all_right(dest)


def test_corrupted_mirror_file_is_refused(tmp_path: Path, mirror: Path) -> None:
    bad = BF.FILES[0]
    data = bytearray((mirror / bad.local).read_bytes())
    data[100] ^= 1  # same size, one bit off
    (mirror / bad.local).write_bytes(bytes(data))
    dest = tmp_path / "bench"
    with pytest.raises(BF.BenchmarkFetchError) as e:
        BF.fetch(dest, [str(mirror)])
    assert isinstance(e.value, UserError)
    msg = str(e.value)
    assert bad.local in msg and "sha256" in msg and "checksum mismatch" in msg and bad.sha256 in msg
    assert f"--from {mirror}" in msg and "raw.githubusercontent.com" in msg
    # only that file failed; the others were fetched, and nothing was written for the bad one
    assert f"could not get 1 of {len(BF.FILES)}" in msg
    assert not (dest / bad.local).exists()
    assert BF.missing(dest) == [bad]


def test_missing_mirror_file_falls_through_to_next_source(tmp_path: Path, mirror: Path) -> None:
    gone = BF.FILES[4]
    (mirror / gone.local).unlink()
    dest = tmp_path / "bench"
    lines: list[str] = []
    BF.fetch(dest, [str(mirror), str(DATA)], log=lines.append)
    _assert_all_right(dest)
    assert f"{gone.local}: fetched from {DATA}" in lines
    assert sum(line.endswith(f"fetched from {mirror}") for line in lines) == len(BF.FILES) - 1

    # with no next source, the error names the file, the source and why
    with pytest.raises(BF.BenchmarkFetchError) as e:
        BF.fetch(tmp_path / "other", [str(mirror)])
    msg = str(e.value)
    assert gone.local in msg and "not found" in msg and str(mirror / gone.local) in msg


def test_bad_sources_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    for sources, needle in (
        ([str(tmp_path / "nowhere")], "no such folder"),
        (["ftp://example.org/x"], "unknown kind"),
        ([], "no source"),
    ):
        with pytest.raises(BF.BenchmarkFetchError, match=needle):
            BF.fetch(tmp_path / "bench", sources)
    assert not (tmp_path / "bench").exists()


def test_fetch_over_http(tmp_path: Path, http_mirror: str) -> None:
    dest = tmp_path / "bench"
    lines: list[str] = []
    BF.fetch(dest, [http_mirror], timeout=10, log=lines.append)
    _assert_all_right(dest)
    assert lines == [f"{f.local}: fetched from {http_mirror}" for f in BF.FILES]


def test_http_not_found_and_network_error_fall_through(tmp_path: Path, http_mirror: str) -> None:
    dest = tmp_path / "bench"
    missing_base = http_mirror + "no-such-dir"
    # a port nothing listens on: bind one, note it, close it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(BF.BenchmarkFetchError) as e:
        BF.fetch(dest, [missing_base, dead], timeout=10)
    msg = str(e.value)
    assert f"could not get {len(BF.FILES)} of {len(BF.FILES)}" in msg
    assert "not found" in msg and "HTTP 404" in msg and "network error" in msg
    # an unreachable source is tried once, not once per file
    assert msg.count(f"--from {dead}: network error") == 1
    assert msg.count(f"--from {dead}: not tried (network error on an earlier file)") == len(BF.FILES) - 1
    assert all(f.local in msg for f in BF.FILES)

    BF.fetch(dest, [missing_base, dead, http_mirror], timeout=10)
    _assert_all_right(dest)


def _moaa(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(
        [str(MOAA), "fetch-benchmarks", *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def test_cli(tmp_path: Path, mirror: Path) -> None:
    dest = tmp_path / "bench"
    proc = _moaa(str(dest), "--from", str(DATA), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    n = len(BF.FILES)
    assert out[:n] == [f"{f.local}: fetched from {DATA}" for f in BF.FILES]
    assert out[n] == f"{n} benchmark files checked in {dest} ({n} fetched, 0 already there)"
    _assert_all_right(dest)

    # the default folder, relative to where it runs; then everything is already there
    proc = _moaa("--from", str(mirror), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_all_right(tmp_path / "data" / "benchmarks")
    proc = _moaa("--from", str(mirror), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.count("already there") == len(BF.FILES) + 1, (
        proc.stdout + proc.stderr
    )


def test_python_m(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "moaa.benchmarks.files", str(tmp_path / "b"), "--from", str(DATA)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_all_right(tmp_path / "b")


@pytest.mark.parametrize("kind", ["no folder", "corrupted"])
def test_cli_bad_source(tmp_path: Path, mirror: Path, kind: str) -> None:
    if kind == "no folder":
        source, needles = str(tmp_path / "nowhere"), ["no such folder", "--from"]
    else:
        (mirror / BF.FILES[3].local).write_bytes(b"{}\n")
        source, needles = str(mirror), [BF.FILES[3].local, "sha256", "raw.githubusercontent.com"]
    proc = _moaa(str(tmp_path / "bench"), "--from", source, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    assert "moaa fetch-benchmarks: error:" in proc.stderr, out
    for needle in needles:
        assert needle in proc.stderr, out


def test_the_shipped_excerpt_is_rebuilt_byte_for_byte_from_the_published_files(tmp_path: Path):
    """data/samples/benchmarks is what ``excerpt`` writes from the published files: every row a byte-exact
    copy of a published row, nothing edited; the readers take it as they take the full files."""
    from moaa.benchmarks import alpaca_eval, arena_hard, mt_bench

    written = BF.excerpt(DATA, tmp_path / "excerpt")
    shipped = ROOT / BF.SAMPLE_DIR
    assert sorted(p.relative_to(tmp_path / "excerpt") for p in written) == sorted(
        p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file() and p.name != "README.md"
    )
    for p in written:
        assert p.read_bytes() == (shipped / p.relative_to(tmp_path / "excerpt")).read_bytes(), p
    # each JSONL line is a line of the published file
    for local in ("mt_bench/question.jsonl", "arena_hard/model_answer_gpt-4-0314.jsonl"):
        published = set((DATA / local).read_text().splitlines())
        assert set((shipped / local).read_text().splitlines()) <= published
    qs = mt_bench.mt_bench_questions(
        shipped / "mt_bench/question.jsonl", shipped / "mt_bench/reference_answer_gpt-4.jsonl"
    )
    assert len(qs) == 16 and len({q["category"] for q in qs}) == 8
    assert all(q["reference"] for q in qs if q["category"] in mt_bench.NEED_REFERENCE)
    answers = arena_hard.arena_hard_answers(shipped / "arena_hard/model_answer_gpt-4-0314.jsonl")
    questions = arena_hard.arena_hard_questions(shipped / "arena_hard/question.jsonl")
    assert len(questions) == 8 and set(answers) == {q["uid"] for q in questions}
    full = alpaca_eval.alpaca_eval_outputs(DATA / "alpaca_eval/gpt4_1106_preview.model_outputs.json")
    assert (
        alpaca_eval.alpaca_eval_outputs(shipped / "alpaca_eval/gpt4_1106_preview.model_outputs.json")
        == full[:16]
    )


def test_the_excerpt_needs_the_published_files(tmp_path: Path, mirror: Path):
    (mirror / "arena_hard/question.jsonl").write_text("{}\n")
    with pytest.raises(BF.BenchmarkFetchError, match="arena_hard/question.jsonl"):
        BF.excerpt(mirror, tmp_path / "out")
    assert not (tmp_path / "out").exists()
