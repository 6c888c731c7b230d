"""The embedded local models, built on first use from what the install brought (nothing is downloaded):

- SmolLM2-135M-Instruct (``models/smollm2/SmolLM2-135M-Instruct``), a real instruction model: the embedded
  default of every job (``moaa.embedded.smollm``);
- three tiny random-weight models (``models/tiny/<name>``) for fast tests; their text is noise
  (``moaa.embedded.tiny``).

    moaa make-models models          # both kinds
    moaa make-tiny-models models/tiny
"""

from __future__ import annotations

import sys
from pathlib import Path

from moaa.embedded import is_embedded, smollm
from moaa.embedded.tiny import TINY_MODELS, make_tiny_models


def ensure(paths: list[str]) -> None:
    """Build every missing embedded model named in ``paths``; leave all others alone (hub ids and other
    paths go to the engine as they are)."""
    tiny = {s.name: s for s in TINY_MODELS}
    for path in paths:
        p = Path(path)
        if not is_embedded(path) or (p / "config.json").exists():
            continue
        if p.name == smollm.NAME:
            print(f"[moaa] converting the embedded {smollm.NAME} into {p} (once, ~10 s)", flush=True)
            smollm.convert(p)
        else:
            make_tiny_models(p.parent, specs=(tiny[p.name],))


def make_models(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    return [smollm.convert(out / "smollm2" / smollm.NAME), *make_tiny_models(out / "tiny")]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        raise SystemExit("usage: moaa make-models DIR")
    for p in make_models(args[0]):
        print(p)
