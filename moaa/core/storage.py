"""Local paths and cloud URIs (``s3://``, ``gs://``) through pyarrow filesystems, so that one config
runs on a laptop and on a cluster. Every job reads and writes through these few functions."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(path: str) -> bool:
    return "://" in path


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it). Relative local paths are made absolute first so that Ray workers
    started in other folders see the same files."""
    if not is_uri(path):
        path = os.path.abspath(path)
    return pafs.FileSystem.from_uri(path)


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_uri(base) else os.path.join(base, *parts)


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def list_files(path: str, suffix: str = "") -> list[str]:
    """Files directly under a folder (sorted, full paths or URIs); empty if the folder is missing."""
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    names = sorted(
        posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)
    )
    return [join(path, n) for n in names]


def list_dirs(path: str) -> list[str]:
    """Folders directly under a folder (sorted, full paths or URIs); empty if the folder is missing."""
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    return [
        join(path, n)
        for n in sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory)
    ]


def read_json(path: str) -> Any:
    fs, p = resolve(path)
    with fs.open_input_stream(p) as f:
        return json.loads(f.read().decode())


def _atomic_write(path: str, data: bytes) -> None:
    # Local: write a temp file then rename, so a killed job never leaves half a file under the real name.
    # Object stores: a single PUT is already all-or-nothing.
    fs, p = resolve(path)
    fs.create_dir(posixpath.dirname(p), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, p)
    else:
        with fs.open_output_stream(p) as f:
            f.write(data)


def write_json(path: str, obj: Any) -> None:
    _atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def write_parquet(table: pa.Table, path: str) -> None:
    """Write one Parquet file atomically (see ``_atomic_write``)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    _atomic_write(path, sink.getvalue().to_pybytes())


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = resolve(path)
    return pq.read_table(p, filesystem=fs, columns=columns)


def read_schema(path: str) -> pa.Schema:
    fs, p = resolve(path)
    with fs.open_input_file(p) as f:
        return pq.ParquetFile(f).schema_arrow


def parquet_num_rows(path: str) -> int:
    fs, p = resolve(path)
    with fs.open_input_file(p) as f:
        return pq.ParquetFile(f).metadata.num_rows


def remove(path: str) -> None:
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(p)
    elif info.type == pafs.FileType.File:
        fs.delete_file(p)


def cache_dir() -> str:
    """Where model folders read from object storage are copied on each node (``MOAA_CACHE``, default
    ``~/.cache/moaa``)."""
    return os.environ.get("MOAA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "moaa")


def local_copy(path: str) -> str:
    """A local folder holding the files of ``path``: the path itself when local; for a URI, a copy in this
    node's cache. vLLM and transformers load from local folders, so an engine or a training worker reads an
    ``s3://``/``gs://`` model through this. The copy is keyed by the URI and its files' names, sizes and
    times: a model rewritten at the same URI is fetched again, an unchanged one once per node."""
    if not is_uri(path):
        return path
    fs, p = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    infos = [i for i in infos if i.type == pafs.FileType.File]
    if not infos:
        raise FileNotFoundError(f"{path} holds no files")
    listing = sorted((i.path, i.size, str(i.mtime)) for i in infos)
    key = hashlib.sha256(json.dumps([path, listing]).encode()).hexdigest()[:16]
    dest = os.path.join(cache_dir(), "models", f"{posixpath.basename(p.rstrip('/'))}-{key}")
    if os.path.isdir(dest):
        return dest
    locks = os.path.join(cache_dir(), "locks")  # apart: a listing of models/ holds models only
    os.makedirs(locks, exist_ok=True)
    # The engines and the training ranks of one node ask for the same model at once (8 ranks, 16 GB each
    # for an 8B model): one fetches it under an exclusive lock, the others wait and find it. The copy goes
    # to a folder of its own first and is renamed when complete, so a process killed mid-copy leaves none.
    with open(os.path.join(locks, f"{os.path.basename(dest)}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(dest):
            return dest
        tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
        for info in infos:
            local = os.path.join(tmp, posixpath.relpath(info.path, p))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with fs.open_input_stream(info.path) as src, open(local, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 24)
        os.rename(tmp, dest)
    mb = sum(i.size for i in infos) / 1e6
    print(f"[storage] fetched {path} ({len(infos)} files, {mb:,.1f} MB) to {dest}", flush=True)
    return dest
