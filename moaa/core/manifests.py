"""Run folders and manifests: ``<runs_dir>/<run_id>/<stage>/`` holds a stage's outputs, a
``manifest.json`` saying what finished (so reruns resume and later jobs chain on it) and a
``summary.json`` with the run's accounting."""

from __future__ import annotations

import time
from typing import Any

from moaa import __version__
from moaa.core import storage
from moaa.core.config import UserError

MANIFEST = "manifest.json"
SUMMARY = "summary.json"


class ResumeError(UserError, RuntimeError):
    """An output folder that holds another configuration's work."""


class MissingInputError(UserError, FileNotFoundError):
    """An upstream stage's output that is not there (yet)."""


def load_manifest(out_dir: str) -> dict[str, Any] | None:
    path = storage.join(out_dir, MANIFEST)
    return storage.read_json(path) if storage.exists(path) else None


def start_manifest(
    out_dir: str,
    stage: str,
    run_id: str,
    cfg_hash: str,
    config: dict[str, Any],
    other_work: bool = False,
) -> dict[str, Any]:
    """Open (or reopen, to resume) the manifest of a stage. A folder that holds work committed with other
    settings is refused: mixing two configurations in one output would make rows incomparable. A failed
    attempt that committed nothing (no shard in the manifest, and ``other_work`` false: e.g. no training
    checkpoint) does not lock the folder: its leftovers are cleared and this config starts over."""
    manifest = load_manifest(out_dir)
    if (
        manifest is not None
        and manifest.get("config_hash") != cfg_hash
        and manifest.get("status") != "complete"
        and not manifest.get("shards")
        and not other_work
    ):
        print(
            f"[{stage}] {out_dir}: the earlier attempt (config hash {manifest.get('config_hash')}) committed "
            f"nothing; starting over with this config ({cfg_hash})"
        )
        storage.remove(storage.join(out_dir, "work"))
        manifest = None
    if manifest is not None:
        check_same_config(out_dir, manifest, stage, cfg_hash)
        manifest["resumed"] = manifest.get("resumed", 0) + 1
    else:
        manifest = {
            "stage": stage,
            "run_id": run_id,
            "config_hash": cfg_hash,
            "moaa_version": __version__,
            "config": config,
            "status": "running",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "shards": {},
        }
    manifest["status"] = "running" if manifest.get("status") != "complete" else "complete"
    storage.write_json(storage.join(out_dir, MANIFEST), manifest)
    return manifest


def check_same_config(out_dir: str, manifest: dict[str, Any], stage: str, cfg_hash: str) -> None:
    if manifest.get("config_hash") != cfg_hash:
        raise ResumeError(
            f"{out_dir} holds a {stage} run with config hash {manifest.get('config_hash')}, but this "
            f"config hashes to {cfg_hash}. Use another run_id (or output_dir), or delete the folder "
            "to start over."
        )


def save_manifest(out_dir: str, manifest: dict[str, Any]) -> None:
    storage.write_json(storage.join(out_dir, MANIFEST), manifest)


def finish_manifest(out_dir: str, manifest: dict[str, Any], **outputs: Any) -> None:
    manifest.update(outputs)
    manifest["status"] = "complete"
    manifest["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save_manifest(out_dir, manifest)


def require_complete(in_dir: str, stage: str) -> dict[str, Any]:
    """The manifest of an upstream stage that must have finished; a clear error otherwise."""
    manifest = load_manifest(in_dir)
    if manifest is None:
        raise MissingInputError(
            f"{in_dir} has no {MANIFEST}: run the {stage} job first (python -m jobs.{stage})"
        )
    if manifest.get("status") != "complete":
        raise MissingInputError(
            f"{in_dir}: the {stage} job has not finished (status {manifest.get('status')!r}); rerun it"
        )
    return manifest
