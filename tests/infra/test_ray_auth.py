"""Every Ray cluster under infra/ turns token authentication on, with the token from a Kubernetes
Secret, the launcher's file mounts or the job's environment, never written in the file; its dashboard
listens on loopback or sits behind the token (docs/cluster.md, Security)."""

from __future__ import annotations

import re

from tests.infra.test_manifests import INFRA, load_yaml

TOKEN_FROM_SECRET = {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "orch-ray-token",
                                                                              "key": "RAY_AUTH_TOKEN"}}}


def kuberay_containers():
    cluster, job = load_yaml("kuberay/raycluster.yaml"), load_yaml("kuberay/rayjob.yaml")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    pods = [group["template"]["spec"] for group in groups] + [job["spec"]["submitterPodTemplate"]["spec"]]
    return [container for pod in pods for container in pod["containers"]]


def test_every_kuberay_container_asks_for_the_token_in_a_secret():
    """The head, every worker group and the RayJob's submitter (which talks to the dashboard)."""
    containers = kuberay_containers()
    assert len(containers) == 3
    for container in containers:
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"], container["name"]
        assert TOKEN_FROM_SECRET in container["env"], container["name"]


def test_the_kuberay_dashboard_is_reached_only_through_the_cluster_network():
    head = load_yaml("kuberay/raycluster.yaml")["spec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"  # no LoadBalancer, no NodePort: kubectl port-forward


def test_the_aws_cluster_starts_every_node_with_the_mounted_token_and_a_loopback_dashboard():
    launcher = load_yaml("ray-cluster/aws.yaml")
    starts = [c for c in launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        assert re.search(r"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=\$HOME/(\S+) ray start", command), command
    mounted = {target.removeprefix("~/"): source for target, source in launcher["file_mounts"].items()}
    path = re.search(r"RAY_AUTH_TOKEN_PATH=\$HOME/(\S+)", starts[0]).group(1)
    assert mounted[path].startswith("~/.orch/")  # a file on the user's machine, outside the repository
    head = next(c for c in launcher["head_start_ray_commands"] if "ray start --head" in c)
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in (INFRA / "ray-cluster" / "aws.yaml").read_text()


def test_the_sbatch_script_makes_a_token_per_job_before_ray_starts():
    text = (INFRA / "slurm" / "orch-ray.sbatch").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert code.index("export RAY_AUTH_MODE=token") < code.index("ray start --head")
    assert re.search(r"^RAY_AUTH_TOKEN=\$\(python -c 'import secrets; print\(secrets.token_hex\(32\)\)'\)$", code, re.M)
    assert code.index("export RAY_AUTH_TOKEN") < code.index("ray start --head")
    assert "--include-dashboard=false" in code


def test_no_token_is_written_in_any_infra_file():
    for path in INFRA.rglob("*"):
        if path.is_file():
            for value in re.findall(r"RAY_AUTH_TOKEN[=:]\s*['\"]?([^\s'\"]+)", path.read_text()):
                assert value.startswith(("$", "{")), (path, value)
