"""One config system for every job: a typed pydantic model, one YAML file, dotted ``key=value`` overrides.

    python -m jobs.generate_sft --config configs/generate_sft/tiny.yaml proposers.0.sampling.temperature=0.2

Unknown keys are errors (``extra="forbid"``) and the message names the key and the keys that exist there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from moaa.core.storage import is_uri

T = TypeVar("T", bound="Config")


class UserError(Exception):
    """An error in what the user gave (config, input data, output folder): its message names the file,
    row or key and the fix, so a job started from the command line prints it without a traceback."""


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message says what to change."""


class Config(BaseModel):
    """Base of every job config and sub-config: typed, documented, strict about unknown keys. Defaults are
    validated too, so that a default path is made absolute like a given one."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, validate_default=True, protected_namespaces=()
    )


# ------------------------------------------------------------------------------------------------- paths
# Every local path of a config is made absolute when the config is built, in the driver, against the folder
# the user ran the command from: Ray workers and actors run in other folders (Ray Train's workers in its
# artifacts folder), where a relative path names nothing. Cloud URIs are left as they are.

# The variable Ray's job supervisor sets for the driver of a job submitted with `ray job submit`.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# A Hugging Face hub id: one "owner/name" (or a bare name), no leading "." or "/".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def absolute(path: str) -> str:
    """A local path made absolute against the current folder (``~`` expanded); a URI as it is."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def output_location(path: str) -> str:
    """Like ``absolute``, but a relative local folder is refused in a job submitted with ``ray job submit``:
    its current folder is Ray's temporary copy of the working dir, where nobody would find the outputs."""
    if not is_uri(path) and not os.path.isabs(os.path.expanduser(path)) and os.environ.get(RAY_JOB_ENV):
        raise ValueError(
            f"{path!r} is a relative local path, and this is a job submitted to Ray, whose current folder "
            "is Ray's temporary copy of the working dir: outputs there would be lost. Pass an absolute "
            "path on storage every node shares (e.g. runs_dir=/mnt/shared/moaa) or a cloud URI "
            "(runs_dir=s3://bucket/moaa)"
        )
    return absolute(path)


def hub_id_or_path(value: str) -> str:
    """A model or dataset name: a local path (it exists, starts with '.', '/' or '~', or has more than one
    '/': e.g. models/tiny/tiny-qwen2-a, built on first use) is made absolute; a hub id
    (``owner/name``), a URI and a reference to a model of this run (``run:train_sft``, see
    ``moaa.core.layout``) stay as they are."""
    if is_uri(value) or value.startswith("run:"):
        return value
    if os.path.exists(os.path.expanduser(value)) or not _HUB_ID.match(value):
        return absolute(value)
    return value


def model_source(value: str) -> str:
    """``hub_id_or_path``, and a local model folder must exist and hold a ``config.json`` (the embedded models
    are built on first use), so that a wrong path fails when the config is read, not minutes later inside an
    engine."""
    value = hub_id_or_path(value)
    if is_uri(value) or value.startswith("run:") or not os.path.isabs(value):
        return value
    from moaa.embedded import is_embedded

    if is_embedded(value):
        return value
    if not os.path.isdir(value):
        raise ValueError(
            f"no model folder at {value}: give an existing folder in Hugging Face format (config.json, "
            "weights, tokenizer) or a hub id (owner/name)"
        )
    if not os.path.isfile(os.path.join(value, "config.json")):
        raise ValueError(f"{value} holds no config.json: it is not a model folder in Hugging Face format")
    return value


InputPath = Annotated[str, AfterValidator(absolute)]
ModelSource = Annotated[str, AfterValidator(model_source)]
OutputPath = Annotated[str, AfterValidator(output_location)]
HubIdOrPath = Annotated[str, AfterValidator(hub_id_or_path)]


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"override {dotted!r}: {key!r} is not an index of a list of {len(node)}")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
        else:
            raise ConfigError(f"override {dotted!r}: {'.'.join(keys[:i])!r} is a value, not a section")


def _known_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the sub-model at ``loc`` (best effort, for error messages)."""
    model: Any = cls
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = None
        for cand in [ann, *getattr(ann, "__args__", ())]:
            for inner in [cand, *getattr(cand, "__args__", ())]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
    return sorted(getattr(model, "model_fields", {})) if model is not None else []


def _format_errors(cls: type[BaseModel], err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            known = _known_keys(cls, tuple(e["loc"]))
            hint = f"; known keys here: {', '.join(known)}" if known else ""
            lines.append(f"  unknown key {loc!r}{hint}")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from a YAML file (or the class defaults) plus dotted ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"config file {path} does not exist") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    # Overrides apply to the defaults as well as to the file, so `proposers.0.sampling.temperature=0.2`
    # works on a default list without restating it.
    default = _try_default(cls)
    if default is not None:
        data = _merge(default.model_dump(mode="python"), data)
    for ov in overrides or []:
        key, sep, raw = ov.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {ov!r} is not of the form key=value (e.g. run_id=exp1)")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        source = f"{path or 'defaults'}" + (f" + {' '.join(overrides)}" if overrides else "")
        raise ConfigError(_format_errors(cls, e, source)) from None


def hash_data(data: Any) -> str:
    """A short stable hash of JSON-able data (keys sorted): what a stage's fingerprint is."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def config_hash(cfg: BaseModel, **include: Any) -> str:
    """A short stable hash of a config (or of the fields named in ``include``)."""
    return hash_data(cfg.model_dump(mode="json", **include))


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The config class inside an annotation (``X``, ``X | None``, ``list[X]``) and whether it is a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for arg in getattr(annotation, "__args__", ()):
        sub, _ = _submodel(arg)
        if sub is not None:
            return sub, getattr(annotation, "__origin__", None) is list
    return None, False


def describe(cls: type[BaseModel], prefix: str = "", value: BaseModel | None = None) -> list[str]:
    """One line per key, dotted, with its type, default and description (the ``--help`` text)."""
    lines = []
    value = value if value is not None else _try_default(cls)
    for name, field in cls.model_fields.items():
        current = getattr(value, name, None) if value is not None else None
        sub, is_list = _submodel(field.annotation)
        if sub is not None and current is not None:
            lines.append(f"{prefix}{name}: {field.description or ''}")
            items = list(enumerate(current)) if is_list else [(None, current)]
            for i, item in items:
                lines.extend(describe(sub, f"{prefix}{name}.{'' if i is None else f'{i}.'}", item))
            continue
        type_name = getattr(field.annotation, "__name__", str(field.annotation)).replace("typing.", "")
        default = "required" if current is None and field.is_required() else repr(current)
        lines.append(f"{prefix}{name} ({type_name}, {default}): {field.description or ''}")
    return lines


def _try_default(cls: type[BaseModel]) -> BaseModel | None:
    try:
        return cls()
    except ValidationError:
        return None


def _merge(base: Any, update: Any) -> Any:
    """``update`` over ``base``: mappings merge key by key, anything else (lists too) is replaced. A model
    section that names another model replaces the default's section whole: the default's name, sampling and
    resources were chosen for its own model."""
    if isinstance(base, dict) and isinstance(update, dict):
        if "model" in base and "model" in update and update["model"] != base["model"]:
            return update
        merged = dict(base)
        for key, val in update.items():
            merged[key] = _merge(base[key], val) if key in base else val
        return merged
    return update


def parse_cli(cls: type[T], argv: list[str] | None = None, prog: str = "") -> T:
    """``[--config FILE] [key=value ...]``; ``--help`` lists every key. Exits 2 with the message on error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(f"usage: {prog} [--config FILE.yaml] [--verbose] [key=value ...]\n\nkeys:")
        print("\n".join("  " + line for line in describe(cls)))
        raise SystemExit(0)
    if "--verbose" in argv:
        argv = [a for a in argv if a != "--verbose"] + ["verbose=true"]
    path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit(f"{prog}: --config needs a file")
        path = argv[i + 1]
        del argv[i : i + 2]
    try:
        cfg = load_config(cls, path, argv)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    _print_user_errors_plainly(prog)
    if hasattr(cfg, "runs_dir") and hasattr(cfg, "verbose"):
        from moaa.core import console

        console.setup(cfg.runs_dir, cfg.run_id, prog or "job", cfg.verbose)
    return cfg


def _print_user_errors_plainly(prog: str) -> None:
    """From here on, a ``UserError`` ends the job with its message and exit code 1, no traceback."""
    default_hook = sys.excepthook

    def hook(exc_type, exc, tb):
        from moaa.core import console

        logs = console.where_logs()
        if isinstance(exc, UserError):
            print(f"{prog}: error: {exc}", file=sys.stderr)
            sys.exit(1)
        default_hook(exc_type, exc, tb)
        if logs:
            print(
                f"{prog}: Ray's, Ray Data's, Ray Train's and vLLM's logs of this run: {logs}", file=sys.stderr
            )

    sys.excepthook = hook
