"""moaa.core.console's progress line, as a terminal and a log file show it (the quiet console of a whole job
is checked on `make demo` itself: tests/test_walkthrough.py)."""

import io

from moaa.core import console


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_line_says_done_of_total_rate_elapsed_and_eta(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(console.time, "time", clock)
    p = console.Progress("generate_sft", 40, "row-turns")
    clock.now += 30
    assert p.line(10, "1/4 shards", tokens=3000) == (
        "[generate_sft] 10/40 row-turns, 1/4 shards, 100 tok/s, 0:30, ETA 1:30"
    )
    clock.now += 3600
    assert p.line(40) == "[generate_sft] 40/40 row-turns, 1:00:30"  # no ETA once done


def test_a_log_file_gets_a_line_every_interval_and_a_terminal_one_line_redrawn(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(console.time, "time", clock)
    monkeypatch.setenv("MOAA_PROGRESS_S", "60")
    out = io.StringIO()
    monkeypatch.setattr(console.sys, "stdout", out)
    p = console.Progress("train_sft", 100, "steps")
    for step in range(1, 101):
        clock.now += 2
        p.update(step, "loss 1.0")
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("[train_sft] 30/100 steps, loss 1.0, 1:00")  # every 60 s

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr(console.sys, "stdout", tty)
    p = console.Progress("train_sft", 100, "steps")
    for step in range(1, 11):
        clock.now += 1
        p.update(step)
    p.close()
    text = tty.getvalue()
    assert "\n" not in text and text.count("\r\x1b[2K") == 11  # 10 redraws, then erased for the end line
    assert text.endswith("\r\x1b[2K")


def test_logs_of_a_run_in_object_storage_stay_on_this_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("MOAA_CACHE", str(tmp_path))
    assert console.log_root("s3://bucket/moaa", "r1") == str(tmp_path / "logs" / "r1")
    assert console.log_root("runs", "r1").endswith("/runs/r1/logs")


def test_the_clock_prints_while_no_batch_arrives_and_stops_at_close(monkeypatch):
    monkeypatch.setenv("MOAA_PROGRESS_S", "0.05")
    out = io.StringIO()
    monkeypatch.setattr(console.sys, "stdout", out)
    p = console.Progress("generate_dpo", 20, "row-turns").start()
    deadline = console.time.time() + 5
    while not out.getvalue() and console.time.time() < deadline:
        console.time.sleep(0.05)
    p.close()
    assert out.getvalue().startswith("[generate_dpo] 0/20 row-turns, 0:0")  # no batch yet: 0 done
    printed = out.getvalue()
    console.time.sleep(0.3)
    assert out.getvalue() == printed  # closed: nothing more
