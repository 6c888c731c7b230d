"""The run report: one self-contained HTML page and one Markdown file for a run folder, from whatever
stages it holds (every round): stage table (rows, errors, tokens, cost, wall time), the judge's numbers and
whether it is at chance, the pairs' score margins, benchmark scores with intervals, and a few SFT and DPO
examples.

    python -m jobs.report                                  # runs/demo -> runs/demo/report.html, report.md
    python -m jobs.report run_id=exp1 runs_dir=/mnt/shared/moaa
    moaa report --config configs/report/demo.yaml run_id=exp1

Writes ``<runs_dir>/<run_id>/report.html`` (PNGs embedded, opens offline), ``report.md`` and the plots as
``report/*.png``; reads only, so it runs at any point of a run and again after each stage. Not a Ray job of
its own: no cluster is needed. See moaa/stages/report.py.
"""

from typing import Any

from moaa.core.config import parse_cli
from moaa.stages import report

CONFIG_CLASS = report.ReportConfig


def main(cfg: report.ReportConfig) -> dict[str, Any]:
    # read every stage folder of every round -> tables + plots -> report.html, report.md, report/*.png
    result = report.write(cfg.run_dir())
    print(report.one_line(result))
    return result


if __name__ == "__main__":
    main(parse_cli(CONFIG_CLASS, prog="jobs.report"))
