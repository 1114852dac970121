"""Every deployment file under infra/ parses and carries what docs/cluster.md promises of it.

No cluster, registry or Docker daemon is reached: the files are parsed (YAML, compose, ini, the
Dockerfile's instructions, the sbatch script through `bash -n`) and their fields checked: GPU
limits and autoscaling bounds, spot workers, the orch commands they run (which must load as real
orch configs), and that no secret is written in them.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.experiment.loader import load_config

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.I)


def load_yaml(relative: str):
    return yaml.safe_load((INFRA / relative).read_text())


def ray_version() -> str:
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(pin.split("==")[1] for pin in pins if pin.startswith("ray["))


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    pairs = []
    for line in filter(str.strip, text.splitlines()):
        instruction, _, arguments = line.strip().partition(" ")
        pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def orch_commands(text: str) -> list[list[str]]:
    """Every `orch run ...` command line in a manifest's text, split as a shell would."""
    return [shlex.split(match) for match in re.findall(r"orch run [^\n'|&;]+", text)]


def config_of(command: list[str]) -> ExperimentConfig:
    """The experiment an `orch run CONFIG --set k=v ...` line would run, validated as orch does."""
    assert command[:2] == ["orch", "run"], command
    sets = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    return load_config(REPO / command[2], sets)


def test_every_file_under_infra_is_checked_here():
    checked = {"docker/Dockerfile", "docker/Dockerfile.dockerignore", "kuberay/raycluster.yaml",
               "kuberay/rayjob.yaml", "kuberay/storage.yaml", "ray-cluster/aws.yaml", "slurm/orch-ray.sbatch",
               "mlflow/docker-compose.yml", "mlflow/Dockerfile", "mlflow/basic_auth.ini", "mlflow/.env.example"}
    present = {str(p.relative_to(INFRA)) for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert present == checked


@pytest.mark.parametrize("relative", ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/storage.yaml",
                                      "ray-cluster/aws.yaml", "mlflow/docker-compose.yml"])
def test_no_secret_is_written_into_a_manifest(relative):
    """Every value whose name says secret is a ${VARIABLE} or comes from a Kubernetes Secret."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "name" in node and "value" in node and SECRET_NAME.search(str(node["name"])):
                found.append((node["name"], node["value"]))  # a literal Kubernetes env entry
            for key, value in node.items():
                if SECRET_NAME.search(str(key)) and isinstance(value, str) and not value.startswith("${"):
                    found.append((key, value))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for document in yaml.safe_load_all((INFRA / relative).read_text()):
        walk(document)
    assert found == []


# ------------------------------------------------------------------------------------------ docker
def test_the_image_is_cuda_based_installs_orch_and_runs_it():
    instructions = dockerfile_instructions(INFRA / "docker" / "Dockerfile")
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    froms = [a for i, a in instructions if i == "FROM"]
    assert len(froms) == 1 and args[froms[0].strip("${}")].startswith("nvidia/cuda:")
    assert "runtime" in args[froms[0].strip("${}")]
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert 'pip install ".[gpu]"' in runs and f"ray[default]=={ray_version()}" in runs  # gpu: MLflow's GPU metrics
    assert "openjdk" in runs  # pycocoevalcap's METEOR and tokenizer
    (entrypoint,) = [a for i, a in instructions if i == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint)[-1] == "orch"
    copied = {a.split()[0] for i, a in instructions if i == "COPY"}
    assert {"orchestrator", "trainers", "search_spaces", "pyproject.toml"} <= copied


def test_the_images_cuda_is_the_pinned_torchs_and_the_docs_name_its_driver():
    """The base image's CUDA is the one PyPI's pinned torch is built for (trainers.devices says which, and
    the driver it needs), the build installs that torch, and docs/cluster.md names the same image and driver."""
    from trainers.devices import DRIVER_FOR_CUDA, TORCH_CUDA_BUILDS

    dockerfile = INFRA / "docker" / "Dockerfile"
    instructions = dockerfile_instructions(dockerfile)
    image = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)["CUDA_IMAGE"]
    cuda = ".".join(re.match(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-", image).groups())
    pypi_cuda, driver, _, _ = TORCH_CUDA_BUILDS[0]
    assert cuda == pypi_cuda and driver == DRIVER_FOR_CUDA[cuda.split(".")[0]]
    pins = [pin for pin in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
            if pin.startswith(("torch==", "torchvision=="))]
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert len(pins) == 2 and all(f'"{pin}"' in runs for pin in pins)  # the build with TORCH_INDEX pins the same pair
    said = dockerfile.read_text()
    docs = (REPO / "docs" / "cluster.md").read_text()
    assert f"built for CUDA {cuda}" in said and f"R{driver} or newer" in said
    assert f"`{image}`" in docs and f"built for CUDA {cuda}, which needs driver **R{driver} or newer**" in docs
    for legacy_cuda, legacy_driver, tag, drivers in TORCH_CUDA_BUILDS[1:]:  # the build for an older driver
        index = f"TORCH_INDEX=https://download.pytorch.org/whl/{tag}"
        assert index in said and index in docs and f"nvidia/cuda:{legacy_cuda}." in said
        assert f"| R{legacy_driver}–R{drivers.split('-R')[-1]} |" in docs


def test_the_build_context_leaves_out_everything_but_the_package():
    rules = [line for line in (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
             if line and not line.startswith("#")]
    assert rules[0] == "*"  # nothing goes in unless listed: no results, data or .env
    assert {"!pyproject.toml", "!orchestrator/", "!trainers/", "!search_spaces/"} <= set(rules)
    assert "**/.env" in rules


# ----------------------------------------------------------------------------------------- kuberay
def test_the_raycluster_has_a_cpu_head_and_an_autoscaled_gpu_group():
    cluster = load_yaml("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray_version() and spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    (gpu,) = spec["workerGroupSpecs"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] and gpu["maxReplicas"] >= 2
    (worker,) = gpu["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    images = {c["image"] for group in (head, gpu) for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1  # head and workers run the same code


def test_every_ray_pod_mounts_the_shared_volumes_the_claims_declare():
    cluster, claims = load_yaml("kuberay/raycluster.yaml"), list(yaml.safe_load_all(
        (INFRA / "kuberay" / "storage.yaml").read_text()))
    declared = {claim["metadata"]["name"] for claim in claims}
    assert all(claim["spec"]["accessModes"] == ["ReadWriteMany"] for claim in claims)
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        claimed = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claimed == declared
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert {"/mnt/results", "/mnt/data", "/dev/shm"} <= mounts
        assert {"secretRef": {"name": "orch-secrets"}} in pod["containers"][0]["envFrom"]


def test_the_rayjob_runs_the_coursework_on_that_cluster_with_shared_results():
    job, cluster = load_yaml("kuberay/rayjob.yaml"), load_yaml("kuberay/raycluster.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    (command,) = orch_commands(job["spec"]["entrypoint"])
    assert command[2] == "search_spaces/coursework.yaml"
    config = config_of(command)  # a real, valid orch config
    assert config.ray.storage == "/mnt/results" and config.tracking.uri.startswith("http")
    assert 0 < config.resources.gpu <= 1
    # The GPU group autoscales from 0 pods: the run must not count its GPUs before its trials ask for them.
    assert cluster["spec"]["workerGroupSpecs"][0]["minReplicas"] > 0 or config.ray.autoscaling


# -------------------------------------------------------------------------------- cluster launcher
def test_the_aws_launcher_file_has_spot_gpu_workers_in_the_orch_image():
    launcher = load_yaml("ray-cluster/aws.yaml")
    assert launcher["provider"]["type"] == "aws"
    assert launcher["docker"]["image"] == load_yaml("kuberay/raycluster.yaml")["spec"]["workerGroupSpecs"][0][
        "template"]["spec"]["containers"][0]["image"]
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types and types[launcher["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for t in types.values() if re.match(r"(g|p)\d", t["node_config"]["InstanceType"])]
    assert gpu and all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in gpu)
    assert all(t["max_workers"] <= launcher["max_workers"] for t in gpu)
    assert launcher["setup_commands"]
    if any(t["min_workers"] == 0 for t in gpu):  # GPU nodes arrive with the trials: not counted before them
        assert "--set ray.autoscaling=true" in (INFRA / "ray-cluster" / "aws.yaml").read_text()
    assert any("ray start --head" in c for c in launcher["head_start_ray_commands"])
    assert any("ray start --address" in c for c in launcher["worker_start_ray_commands"])


# ------------------------------------------------------------------------------------------- slurm
def test_the_sbatch_script_is_valid_bash_that_starts_ray_then_orch():
    script = INFRA / "slurm" / "orch-ray.sbatch"
    text = script.read_text()
    if shutil.which("bash"):
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M))
    assert {"nodes", "ntasks-per-node", "gpus-per-task", "time"} <= set(directives)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert code.index("ray start --head") < code.index("ray start --address") < code.index("orch run")
    assert "orch resume" in code and 'export RAY_ADDRESS="$address"' in code


# ------------------------------------------------------------------------------------------ mlflow
def test_the_mlflow_stack_is_postgres_minio_and_a_basic_auth_server():
    compose = load_yaml("mlflow/docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    command = " ".join(services["mlflow"]["command"])
    assert "--app-name basic-auth" in command and "--serve-artifacts" in command
    assert '--backend-store-uri "postgresql://' in command and '--artifacts-destination "s3://' in command
    environment = services["mlflow"]["environment"]
    assert environment["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert set(services["mlflow"]["depends_on"]) == {"postgres", "minio-bucket"}


def test_every_variable_the_stack_reads_is_in_the_env_example():
    compose_text = (INFRA / "mlflow" / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)", compose_text))
    example = dict(line.split("=", 1) for line in (INFRA / "mlflow" / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert used <= set(example), used - set(example)
    assert all(value.startswith("change-me") for key, value in example.items()
               if SECRET_NAME.search(key) and key != "MINIO_ROOT_USER")


def test_the_auth_config_holds_no_password_and_the_image_finds_it():
    auth = configparser.ConfigParser()
    auth.read(INFRA / "mlflow" / "basic_auth.ini")
    assert auth["mlflow"]["default_permission"] in {"READ", "NO_PERMISSIONS"}
    assert "admin_password" not in auth["mlflow"]
    instructions = dockerfile_instructions(INFRA / "mlflow" / "Dockerfile")
    assert ("ENV", "MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini") in instructions
    mlflow_pin = next(p for p in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                      if p.startswith("mlflow=="))
    assert mlflow_pin in " ".join(a for i, a in instructions if i == "RUN")
