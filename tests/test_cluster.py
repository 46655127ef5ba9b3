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

from lion_distill.config import load_config

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
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
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
    return [
        f"{where(e)}: {e.message}"
        for e in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.path)))
    ]


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
    return {
        "text": text,
        "base": args.get("RAY_LLM_IMAGE"),
        "from": re.findall(r"^FROM (\S+)", text, re.M),
        "workdir": re.findall(r"^WORKDIR (\S+)", text, re.M),
        "tag": re.search(r"docker build .* -t (\S+) \.", text)[1],
    }


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


# AWS's Deep Learning Base OSS Nvidia Driver AMI (Ubuntu 22.04), by its SSM parameter (cluster/lion-aws.yaml).
DLAMI = "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"


def test_every_launcher_node_type_names_its_image():
    """Without an ImageId Ray's launcher boots its default Ubuntu 18.04 DLAMI (a CUDA 11-era driver)
    under the cu128 image: every node type names one, the DLAMI's current ID or one pinned from it."""
    from ray.autoscaler._private.aws.config import DEFAULT_AMI

    for name, node in load_yaml(LAUNCHER)["available_node_types"].items():
        image = node["node_config"].get("ImageId", "")
        assert image == DLAMI or re.fullmatch(r"ami-[0-9a-f]{8,17}", image), (name, image)
        assert image not in DEFAULT_AMI.values(), (name, image)


def test_launcher_job_config_exists_and_loads():
    cfg = load_job_config(load_yaml(LAUNCHER)["metadata"]["job_entrypoint"])
    assert cfg.teacher.backend == "openai"


@pytest.mark.parametrize(
    "mutate, path, says",
    [
        (lambda c: c["docker"].update(imagee="x"), "docker", "'imagee' was unexpected"),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(max_workers="two"),
            "available_node_types.gpu_worker.max_workers",
            "is not of type 'integer'",
        ),
    ],
    ids=["typo", "wrong-type"],
)
def test_launcher_config_rejects_mistakes(mutate, path, says):
    cfg = load_yaml(LAUNCHER)
    mutate(cfg)
    error = launcher_error(cfg)
    assert error is not None and error.startswith(f"{path}:") and says in error, error


SHARED = "/mnt/shared"


def bind_mounts(run_options: list[str]) -> dict[str, str]:
    """`-v HOST:CONTAINER` docker options -> {container path: host path}."""
    pairs = [o.split(maxsplit=1)[1].split(":")[:2] for o in run_options if o.startswith(("-v ", "--volume "))]
    return {container: host for host, container in pairs}


def docker_env(run_options: list[str]) -> dict[str, str]:
    pairs = [o.split(maxsplit=1)[1].split("=", 1) for o in run_options if o.startswith(("--env ", "-e "))]
    return dict(pairs)


def on_shared_storage(path: str, mounts: dict[str, str]) -> bool:
    """`path` (in a container) is on the filesystem every host mounts at SHARED."""
    return any(
        (path == c or path.startswith(c.rstrip("/") + "/")) and (h == SHARED or h.startswith(SHARED + "/"))
        for c, h in mounts.items()
    )


def launcher_storage_problems(cfg: dict) -> list[str]:
    """What keeps the launcher's job from running: every host mounts the shared filesystem,
    every container sees it, and the job's run directory, student and hub cache are on it;
    a model is downloaded once onto it, not onto one node's disk."""
    problems = []
    if not any(re.search(rf"\bmount\b.* {SHARED}$", c) for c in cfg.get("initialization_commands", [])):
        problems.append(f"initialization_commands: no host mounts the shared filesystem at {SHARED}")
    options = cfg["docker"].get("run_options", [])
    mounts = bind_mounts(options)
    if mounts.get(SHARED) != SHARED:
        problems.append(f"docker.run_options: the containers do not see {SHARED}")
    for name, node in cfg["available_node_types"].items():
        if "docker" in node:
            problems.append(f"available_node_types.{name}.docker: overrides the shared mounts")
    job = load_job_config(cfg["metadata"]["job_entrypoint"])
    for field, path in (
        ("run_dir", job.run_dir),
        ("student.model", job.student.model),
        ("HF_HOME", docker_env(options).get("HF_HOME", "~/.cache/huggingface")),
    ):
        if not on_shared_storage(path, mounts):
            problems.append(f"{field}: {path} is not on the shared filesystem in the containers")
    downloads = [(key, c) for key, v in cfg.items() if key.endswith("setup_commands") for c in v if "download" in c]
    downloads += [
        (f"{name}.worker_setup_commands", c)
        for name, node in cfg["available_node_types"].items()
        for c in node.get("worker_setup_commands", ())
        if "download" in c
    ]
    for key, command in downloads:
        target = re.search(r"--local-dir (\S+)", command)
        if key != "head_setup_commands" or not target or not on_shared_storage(target[1], mounts):
            problems.append(f"{key}: {command!r} must download once, from the head, onto the shared filesystem")
    return problems


def launcher_auth_problems(cfg: dict) -> list[str]:
    env = docker_env(cfg["docker"].get("run_options", []))
    problems = []
    if env.get("RAY_AUTH_MODE") != "token":
        problems.append("docker.run_options: RAY_AUTH_MODE=token is not set in the containers")
    if env.get("RAY_AUTH_TOKEN_PATH") not in cfg.get("file_mounts", {}):
        problems.append("file_mounts: the token file RAY_AUTH_TOKEN_PATH names is not copied to the nodes")
    head = " ".join(cfg["head_start_ray_commands"])
    if "--dashboard-host=0.0.0.0" in head:
        problems.append("head_start_ray_commands: the dashboard listens on every interface")
    return problems


def test_launcher_mounts_shared_storage_for_the_run_directory_and_models():
    assert launcher_storage_problems(load_yaml(LAUNCHER)) == []


def test_launcher_requires_token_authentication():
    cfg = load_yaml(LAUNCHER)
    assert launcher_auth_problems(cfg) == []
    assert not any("RAY_AUTH_MODE=disabled" in c for key, v in cfg.items() if key.endswith("commands") for c in v)


def _drop_option(prefix: str):
    return lambda c: c["docker"].update(run_options=[o for o in c["docker"]["run_options"] if not o.startswith(prefix)])


@pytest.mark.parametrize(
    "mutate, check, says",
    [
        (_drop_option("-v /mnt/shared:"), launcher_storage_problems, "docker.run_options: the containers do not see"),
        (
            _drop_option("-v /mnt/shared/runs:"),
            launcher_storage_problems,
            "run_dir: /runs/lion-7b is not on the shared",
        ),
        (lambda c: c.update(initialization_commands=[]), launcher_storage_problems, "initialization_commands: no host"),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(
                worker_setup_commands=["hf download huggyllama/llama-7b --local-dir /models/llama-7b"]
            ),
            launcher_storage_problems,
            "gpu_worker.worker_setup_commands: 'hf download",
        ),
        (_drop_option("--env RAY_AUTH_MODE="), launcher_auth_problems, "RAY_AUTH_MODE=token is not set"),
        (lambda c: c.update(file_mounts={}), launcher_auth_problems, "file_mounts: the token file"),
    ],
    ids=["no-container-mount", "run-dir-not-shared", "no-host-mount", "worker-download", "no-token", "no-token-file"],
)
def test_launcher_checks_catch_what_breaks_a_run(mutate, check, says):
    cfg = load_yaml(LAUNCHER)
    mutate(cfg)
    problems = check(cfg)
    assert any(says in p for p in problems), problems


def test_readme_shows_how_to_submit_with_the_token():
    text = (ROOT / "cluster" / "README.md").read_text()
    assert "ray get-auth-token --generate" in text and "RAY_AUTH_MODE=token ray job submit" in text
    assert (
        "export RAY_AUTH_TOKEN=$(kubectl get secret" in text and "fs-YOUR-EFS-ID" in text and "mount -t lustre" in text
    )


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


@pytest.mark.parametrize(
    "mutate, path, says",
    [
        (
            lambda s: s["rayClusterSpec"]["headGroupSpec"].update(rayStartParam={}),
            "spec.rayClusterSpec.headGroupSpec",
            "'rayStartParam' was unexpected",
        ),
        (
            lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplicas="one"),
            "spec.rayClusterSpec.workerGroupSpecs.0.maxReplicas",
            "is not of type 'integer'",
        ),
    ],
    ids=["typo", "wrong-type"],
)
def test_rayjob_rejects_mistakes(mutate, path, says):
    manifest = load_yaml(RAYJOB)
    mutate(manifest["spec"])
    errors = rayjob_errors(manifest)
    assert len(errors) == 1 and errors[0].startswith(f"{path}:") and says in errors[0], errors


def test_rayjob_requires_token_authentication():
    cluster = load_yaml(RAYJOB)["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert int(cluster["rayVersion"].split(".")[1]) >= 52  # token auth needs Ray 2.52+
    containers = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    assert not any(e["name"].startswith("RAY_AUTH") for c in containers for e in c["env"])  # the operator's to set


def test_rayjob_runs_a_config_that_fits_its_gpus():
    spec = load_yaml(RAYJOB)["spec"]
    cfg = load_job_config(spec["entrypoint"])
    gpus = sum(
        g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]
    )
    for name in cfg.ROLES:
        role = getattr(cfg, name)
        if role.backend == "vllm":
            assert role.parallelism.tensor_parallel_size * role.parallelism.replicas <= gpus, name
    assert cfg.train.num_workers * cfg.train.gpus_per_worker <= gpus


def test_rayjob_gpu_pods_hold_a_training_checkpoint_on_their_own_disk():
    """Ray Train stages each checkpoint in the pod's /tmp: 12 bytes a parameter (fp32 weights, AdamW's
    two moments) for the 7B student; a pod that asks no ephemeral storage can be evicted for it."""
    (group,) = load_yaml(RAYJOB)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    asked = container["resources"]["requests"]["ephemeral-storage"]
    assert asked.endswith("Gi") and int(asked[:-2]) * 2**30 >= 12 * 7e9, asked
    assert container["resources"]["limits"]["ephemeral-storage"] == asked


def test_rayjob_runtime_env_and_keys():
    spec = load_yaml(RAYJOB)["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    # The image holds the engine, the job and its configs: the job installs and downloads nothing.
    assert not {"pip", "working_dir", "uv", "conda"} & set(runtime_env)
    containers = [spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]]
    containers += [g["template"]["spec"]["containers"][0] for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
    assert {c["image"] for c in containers} == {dockerfile()["tag"]}
    # The pool files, the run directory, the student and the hub cache are on the volume every
    # pod mounts (the head's preflight and tokenising load the student too), not in the code.
    cfg = load_job_config(spec["entrypoint"])
    for container in containers:
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        shared = [*cfg.data.pool_files, cfg.run_dir, cfg.student.model, runtime_env["env_vars"]["HF_HOME"]]
        assert all(any(f.startswith(m + "/") for m in mounts) for f in shared), (container["name"], mounts)
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        for name in ("HF_TOKEN", "OPENAI_API_KEY"):
            assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], (container["name"], name)
    assert not {"HF_TOKEN", "OPENAI_API_KEY"} & set(runtime_env.get("env_vars", {}))


# --- the image -----------------------------------------------------------------


def test_dockerfile_builds_on_rays_llm_image_with_every_extra_a_node_runs():
    d = dockerfile()
    assert d["base"].startswith("rayproject/ray-llm:2.60.0-") and d["from"] == ["${RAY_LLM_IMAGE}"]
    # The GPU extra, and what a train.lora student and a tracking backend import on the nodes.
    assert "pip install --no-cache-dir '.[gpu,lora,tracking]'" in d["text"] and d["workdir"] == [str(IMAGE_ROOT)]
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert d["tag"].endswith(f"/lion-distill:{version}")
    # What it copies exists; what it must not carry is ignored.
    for src in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", d["text"], re.M):
        assert all((ROOT / p).exists() for p in src.split()), src
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", "data"} <= set(ignored)
