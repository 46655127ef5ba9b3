"""The cluster manifests validate offline against the schemas their tools use, reject
typos, and run a job whose config exists and loads.

- cluster/lion-aws.yaml: Ray's own launcher schema, through the same
  prepare_config + validate_config that `ray up` runs (AWS defaults are read from the
  ray package: no credentials, no network).
- cluster/kuberay-rayjob.yaml: the RayJob CRD of KubeRay v1.7.0 (vendored in
  cluster/schemas/), made strict: the CRD lets unknown keys through, and the API
  server drops them silently, so a typo would otherwise become a silent default.
"""
from __future__ import annotations

import argparse
import copy
import re
import shlex
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from engine.config import load_config

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "cluster" / "lion-aws.yaml"
RAYJOB = ROOT / "cluster" / "kuberay-rayjob.yaml"
RAYJOB_CRD = ROOT / "cluster" / "schemas" / "ray.io_rayjobs.yaml"
DOCKERFILE = ROOT / "cluster" / "Dockerfile"
IMAGE_ROOT = Path("/home/ray/lion-distill")


def load_yaml(path: Path):
    return yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def forbid_unknown_keys(schema):
    """Close every object schema that lists its properties and does not already allow
    more (`additionalProperties` or `x-kubernetes-preserve-unknown-fields`)."""
    if isinstance(schema, dict):
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for value in schema.values():
            forbid_unknown_keys(value)
    elif isinstance(schema, list):
        for item in schema:
            forbid_unknown_keys(item)
    return schema


@lru_cache(maxsize=1)
def strict_rayjob_schema() -> dict:
    crd = load_yaml(RAYJOB_CRD)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return forbid_unknown_keys(v1["schema"]["openAPIV3Schema"])


def where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def rayjob_errors(manifest: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(strict_rayjob_schema())
    return [f"{where(e)}: {e.message}" for e in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.path)))]


def launcher_error(cfg: dict) -> str | None:
    try:
        validate_config(prepare_config(copy.deepcopy(cfg)))
    except jsonschema.ValidationError as e:
        return f"{where(e)}: {e.message}"
    return None


def parse_entrypoint(command: str) -> argparse.Namespace:
    """The job command line, read the way jobs/lion.py and `lion-distill lion` read it."""
    argv = shlex.split(command)
    assert argv[:2] in (["python", "jobs/lion.py"], ["lion-distill", "lion"]), f"unexpected job command {command!r}"
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[])
    return parser.parse_args(argv[2:])


def load_job_config(command: str):
    args = parse_entrypoint(command)
    # In the image the repository's files sit under IMAGE_ROOT (cluster/Dockerfile's WORKDIR).
    path = ROOT / Path(args.config).relative_to(IMAGE_ROOT) if args.config.startswith("/") else ROOT / args.config
    assert path.parent == ROOT / "configs" and path.is_file(), f"{args.config}: no such file in configs/"
    return load_config(path, args.set)


def dockerfile() -> dict:
    """What cluster/Dockerfile says (docker cannot build here: the checks are textual)."""
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    return {"text": text, "base": args.get("RAY_LLM_IMAGE"), "from": re.findall(r"^FROM (\S+)", text, re.M),
            "workdir": re.findall(r"^WORKDIR (\S+)", text, re.M), "tag": re.search(r"docker build .* -t (\S+) \.", text)[1]}


# --- the launcher YAML ---------------------------------------------------------

def test_launcher_config_validates_with_rays_schema():
    cfg = load_yaml(LAUNCHER)
    assert launcher_error(cfg) is None
    assert cfg["docker"]["image"] == dockerfile()["tag"]  # the project's image: nothing installed at node start
    commands = [c for key, v in cfg.items() if key.endswith("setup_commands") for c in v]
    commands += [c for node in cfg["available_node_types"].values() for c in node.get("worker_setup_commands", ())]
    assert not any("pip install" in c for c in commands), commands
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] >= 1 and gpu["max_workers"] >= gpu["min_workers"]


def test_launcher_job_config_exists_and_loads():
    cfg = load_job_config(load_yaml(LAUNCHER)["metadata"]["job_entrypoint"])
    assert cfg.teacher.backend == "openai"


@pytest.mark.parametrize("mutate, path, says", [
    (lambda c: c["docker"].update(imagee="x"), "docker", "'imagee' was unexpected"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(max_workers="two"),
     "available_node_types.gpu_worker.max_workers", "is not of type 'integer'"),
], ids=["typo", "wrong-type"])
def test_launcher_config_rejects_mistakes(mutate, path, says):
    cfg = load_yaml(LAUNCHER)
    mutate(cfg)
    error = launcher_error(cfg)
    assert error is not None and error.startswith(f"{path}:") and says in error, error


# --- the KubeRay RayJob --------------------------------------------------------

def test_rayjob_validates_with_strict_crd_schema():
    manifest = load_yaml(RAYJOB)
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    assert rayjob_errors(manifest) == []
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True


def test_strict_schema_still_allows_free_form_maps():
    # Pod metadata, rayStartParams and resource maps are open by design.
    manifest = load_yaml(RAYJOB)
    spec = manifest["spec"]["rayClusterSpec"]
    spec["headGroupSpec"]["rayStartParams"]["object-store-memory"] = "1000000000"
    spec["workerGroupSpecs"][0]["template"]["metadata"] = {"labels": {"team": "lion"}}
    assert rayjob_errors(manifest) == []


@pytest.mark.parametrize("mutate, path, says", [
    (lambda s: s["rayClusterSpec"]["headGroupSpec"].update(rayStartParam={}),
     "spec.rayClusterSpec.headGroupSpec", "'rayStartParam' was unexpected"),
    (lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplicas="one"),
     "spec.rayClusterSpec.workerGroupSpecs.0.maxReplicas", "is not of type 'integer'"),
], ids=["typo", "wrong-type"])
def test_rayjob_rejects_mistakes(mutate, path, says):
    manifest = load_yaml(RAYJOB)
    mutate(manifest["spec"])
    errors = rayjob_errors(manifest)
    assert len(errors) == 1 and errors[0].startswith(f"{path}:") and says in errors[0], errors


def test_rayjob_runs_a_config_that_fits_its_gpus():
    spec = load_yaml(RAYJOB)["spec"]
    cfg = load_job_config(spec["entrypoint"])
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
               for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    for name in cfg.ROLES:
        role = getattr(cfg, name)
        if role.backend == "vllm":
            assert role.parallelism.tensor_parallel_size * role.parallelism.replicas <= gpus, name
    assert cfg.train.num_workers * cfg.train.gpus_per_worker <= gpus


def test_rayjob_runtime_env_and_keys():
    spec = load_yaml(RAYJOB)["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    # The image holds the engine, the job and its configs: the job installs and downloads nothing.
    assert not {"pip", "working_dir", "uv", "conda"} & set(runtime_env)
    containers = [spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [g["template"]["spec"]["containers"][0] for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
    assert {c["image"] for c in containers} == {dockerfile()["tag"]}
    # The pool files are read from the volume every pod mounts, not from the code.
    cfg = load_job_config(spec["entrypoint"])
    for container in containers:
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert all(any(f.startswith(m + "/") for m in mounts) for f in cfg.data.pool_files), (container["name"], mounts)
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        for name in ("HF_TOKEN", "OPENAI_API_KEY"):
            assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], (container["name"], name)
    assert not {"HF_TOKEN", "OPENAI_API_KEY"} & set(runtime_env.get("env_vars", {}))


# --- the image -----------------------------------------------------------------

def test_dockerfile_builds_on_rays_llm_image_with_the_gpu_extra():
    d = dockerfile()
    assert d["base"].startswith("rayproject/ray-llm:2.60.0-") and d["from"] == ["${RAY_LLM_IMAGE}"]
    assert "pip install --no-cache-dir '.[gpu]'" in d["text"] and d["workdir"] == [str(IMAGE_ROOT)]
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert d["tag"].endswith(f"/lion-distill:{version}")
    # What it copies exists; what it must not carry is ignored.
    for src in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", d["text"], re.M):
        assert all((ROOT / p).exists() for p in src.split()), src
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", "data"} <= set(ignored)
