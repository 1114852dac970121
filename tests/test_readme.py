"""The README's first command, run as a newcomer runs it: the quickstart ablation on synthetic data, a
local Ray and a local MLflow store, from a fresh folder. Its sizes (64 px images, 4 trainings, 12
decode variants) are the quickstart's own, not the tests' tiny ones: a bug that only larger inputs
meet (a base64 input example longer than a path) is met here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.orchestrator.commands.test_run import runs_of

REPO_ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The README's bash blocks, in order."""
    return re.findall(r"```bash\n(.*?)\n```", (REPO_ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_gives_two_commands_one_runs_the_quickstart_one_the_tests():
    first, second = readme_commands()[:2]
    assert first == "pip install -e . && orch run search_spaces/quickstart.yaml"
    assert second == 'pip install -e ".[test]" && python -m pytest'


@pytest.mark.integration
@pytest.mark.timeout(1800)  # the run's own limit below is 1500 s: the suite's 900 s would cut it first
def test_the_quickstart_runs_as_the_readme_says(tmp_path):
    """`orch run search_spaces/quickstart.yaml` (the install half is this environment's), in a copy of
    the checkout so its default results folder is a temporary one: exit 0, 4 trainings and 12 decode
    variants FINISHED in MLflow, one logged model per training."""
    command = readme_commands()[0].split("&&")[-1].strip()
    checkout = tmp_path / "orch"
    (checkout / "search_spaces").mkdir(parents=True)
    for path in (REPO_ROOT / "search_spaces").iterdir():
        (checkout / "search_spaces" / path.name).write_bytes(path.read_bytes())
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    args = shlex.split(command)
    assert args[0] == "orch"
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args[1:]], cwd=checkout, capture_output=True,
                          text=True, timeout=1500, env={**env, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-4000:]

    client = MlflowClient(f"sqlite:///{checkout / 'results' / 'mlflow.db'}")
    kinds = runs_of(client, "quickstart")
    assert (len(kinds["parent"]), len(kinds["trial"]), len(kinds["variant"])) == (1, 4, 12)
    assert {run.info.status for runs in kinds.values() for run in runs} == {"FINISHED"}
    experiment = client.get_experiment_by_name("quickstart").experiment_id
    models = client.search_logged_models([experiment])
    assert sorted(model.name for model in models) == sorted(run.info.run_name.split()[0] for run in kinds["trial"])
