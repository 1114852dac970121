"""`orch run --address` on a multi-node Ray cluster, all on this machine (`ray.cluster_utils.Cluster`).

The cluster is a head with no CPUs (it only schedules, like a KubeRay head) and two worker nodes of
one CPU each, labelled by a custom resource. `orch run` joins it as a user's command would: a
separate process given the head's address. The results folder plays the shared mount every node
sees. Which node ran a trial is read off the trial's process: Ray's worker processes are children
of their node's raylet, and Tune writes each trial's pid into its result.json (live in the driver's
staging folder, inside the cluster's Ray session folder; copied to the results folder at the end).

One run serves both checks: two trials (2 and 5 epochs) start at once, one per node; once the long
one has a checkpoint, its node is killed (every process, no warning), and Tune restarts it from that
checkpoint on the node that is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.orchestrator.conftest import REPO_ROOT, sqlite_uri, write_yaml
from tests.orchestrator.commands.test_run import epochs_logged, runs_of

WORKERS = ("worker_a", "worker_b")


@dataclass
class Attempt:
    """One run of a trial's process: the node it ran on and what it reported."""

    pid: int
    node: str
    reports: list[dict] = field(default_factory=list)


@dataclass
class ClusterRun:
    exit_code: int
    log: str
    storage: Path
    attempts: dict[str, list[Attempt]]  # cell -> its attempts, in order
    killed: str  # the worker node that was removed


def parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])  # the fields after "pid (comm) ": state, ppid, ...


def reports_by_cell(ray_temp: Path) -> dict[str, list[dict]]:
    """Every trial's reports so far, from the driver's staging copy of its result.json."""
    reports = {}
    for result in ray_temp.glob("ray/session_latest/artifacts/*/trials/driver_artifacts/c*/result.json"):
        lines = [line for line in result.read_text().splitlines() if line.strip()]
        reports[result.parent.name.split("-")[0]] = [json.loads(line) for line in lines]
    return reports


def record(attempts: dict[str, list[Attempt]], reports: dict[str, list[dict]], raylets: dict[int, str]) -> None:
    """Sort each report into its attempt; a new pid is a new attempt, placed while its process lives."""
    for cell, lines in reports.items():
        known = attempts.setdefault(cell, [])
        for report in lines[sum(len(a.reports) for a in known):]:
            if not known or known[-1].pid != report["pid"]:
                known.append(Attempt(report["pid"], raylets.get(parent_pid(report["pid"]), "?")))
            known[-1].reports.append(report)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (0 CPUs) + worker_a + worker_b (1 CPU each). Its own Ray temp folder keeps it from being
    the cluster that a plain `ray.init()` elsewhere on this machine would join."""
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="orch-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", temp)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        nodes = {name: cluster.add_node(num_cpus=1, resources={name: 1}) for name in WORKERS}
        cluster.wait_for_nodes()
        yield cluster, nodes, Path(temp)
        cluster.shutdown()
    subprocess.run(["rm", "-rf", temp], check=False)


@pytest.fixture(scope="module")
def cluster_run(cluster, tiny_experiment, tmp_path_factory) -> ClusterRun:
    cluster, nodes, ray_temp = cluster
    raylets = {node.all_processes["raylet"][0].process.pid: name for name, node in nodes.items()}
    root = tmp_path_factory.mktemp("cluster")
    storage = root / "results"
    config = write_yaml(root / "spread.yaml", tiny_experiment(
        "spread", storage, ray={"max_failures": 1}, ablation={"train.epochs": [2, 5]}))
    log = (root / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", str(config),
                               "--address", cluster.address],
                              cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    attempts: dict[str, list[Attempt]] = {}
    killed = ""
    deadline = time.monotonic() + 600
    while driver.poll() is None:
        record(attempts, reports_by_cell(ray_temp), raylets)
        long_run = attempts.get("c002", [])
        if not killed and long_run and long_run[0].reports[-1]["epoch"] >= 2 and long_run[0].node in nodes:
            killed = long_run[0].node
            cluster.remove_node(nodes[killed], allow_graceful=False)  # the node dies: raylet, store, trial
        if time.monotonic() > deadline:
            driver.kill()
            pytest.fail(f"orch run did not end in 600 s: {attempts}")
        time.sleep(0.3)
    log.close()
    record(attempts, reports_by_cell(ray_temp), raylets)
    return ClusterRun(driver.returncode, (root / "driver.log").read_text(), storage, attempts, killed)


@pytest.mark.integration
def test_trials_spread_over_the_worker_nodes(cluster_run):
    assert cluster_run.exit_code == 0, cluster_run.log
    first = {cell: attempts[0] for cell, attempts in cluster_run.attempts.items()}
    assert sorted(first) == ["c001", "c002"]
    assert {attempt.node for attempt in first.values()} == set(WORKERS), first  # one per node, at once


@pytest.mark.integration
def test_a_trial_on_a_killed_node_restarts_on_the_other_from_its_checkpoint(cluster_run):
    assert cluster_run.exit_code == 0, cluster_run.log
    assert cluster_run.killed, "the long trial never reached epoch 2 on a known node"
    before, after = cluster_run.attempts["c002"]
    survivor = next(name for name in WORKERS if name != cluster_run.killed)
    assert (before.node, after.node) == (cluster_run.killed, survivor)
    restarted_at = after.reports[0]
    assert restarted_at["iterations_since_restore"] == 1 and restarted_at["epoch"] > 1  # not from scratch
    assert restarted_at["epoch"] <= before.reports[-1]["epoch"] + 1  # from the last checkpoint it had

    # That it then ran to its end is read from MLflow: Ray's staging copy of result.json can miss the
    # last report when the driver ends.
    client = MlflowClient(sqlite_uri(cluster_run.storage))
    trials = {run.data.params["orch.cell"]: run for run in runs_of(client, "spread")["trial"]}
    assert {cell: run.info.status for cell, run in trials.items()} == {"c001": "FINISHED", "c002": "FINISHED"}
    assert trials["c002"].data.tags["orch.retries"] == "1"
    assert epochs_logged(client, trials["c002"]) == [1, 2, 3, 4, 5]  # each epoch once, retry or not
