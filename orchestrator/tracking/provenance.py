"""What a parent run records so a result can be traced back: the YAML, the plan, code and packages;
and what the experiment says of itself in the MLflow UI."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

PACKAGES = ("orch", "torch", "torchvision", "ray", "mlflow", "optuna", "pycocoevalcap", "pydantic", "numpy")


def git_commit(cwd: Optional[Path] = None) -> str:
    """The commit of the code in use (with '+dirty' when the tree has changes), or 'unknown'."""
    where = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def log_provenance(tracker, run_id: str, resolved_yaml: str, plan: Optional[dict], dataset: Optional[dict] = None,
                   description: str = "") -> None:
    """Attach the resolved config, the plan (also as the run's description), the dataset, the git
    commit and package versions to a parent run."""
    tracker.log_text(run_id, resolved_yaml, "config/resolved.yaml")
    if plan is not None:
        tracker.log_json(run_id, plan, "config/plan.json")
    if plan is not None or description:
        tracker.describe(run_id, plan_markdown(plan) if plan is not None else description)
    tracker.log_input(run_id, dataset)
    versions = package_versions()
    tracker.log_json(run_id, versions, "environment/packages.json")
    tracker.set_tags(run_id, {"orch.git_commit": git_commit(), **{f"orch.version.{k}": v for k, v in versions.items()}})


# ------------------------------------------------------------------------------- the experiment
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI's Model training view, not GenAI's
VIEW = "orch"  # the stored view of every run's curves: <experiment>/runs?viewStateShareKey=orch (orch ui prints it)
VIEW_TAG = f"mlflow.sharedViewState.{VIEW}"
# The UI opens in its GenAI mode unless the address says otherwise (MLflow 3.17 reads the mode from the
# address or the browser's last choice, not from the experiment's mlflow.experimentKind tag).
VIEW_QUERY = f"workflowType=machine_learning&viewStateShareKey={VIEW}&compareRunsMode=CHART"
# The UI charts only the first 10 rows of the run table unless told otherwise; a parent, 4 trainings and
# their 12 variant rows would hide half the trainings' curves. The view shows every run's.
VIEW_STATE = {"runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": True, "useGroupedValuesInCharts": True}


def describe_experiment(tracker, name: str, trainer: str, select_by: str) -> None:
    """The experiment as the MLflow UI opens it: its Model training view, a description of where its runs
    and models are, its trainer and ranking metric as tags, and the stored view that charts every run."""
    from orchestrator.tracking.names import mlflow_metric
    from trainers.config import selection_metric

    metric = mlflow_metric(selection_metric(select_by)[0])
    tracker.set_experiment_tags({EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1], "mlflow.note.content": f"""\
**{name}**: an orch ablation of {trainer} models, ranked by `{metric}`.

- **Runs**: a parent run per `orch run` (the plan, the resolved config, the report); under it a run per
  training (its learning curves, `{metric}` per epoch); under each training a run per decode variant,
  made when it was evaluated (its val and test scores: sort the table by a `test_` score to rank the cells).
- **Models**: a logged model per training, named after it (its params, its val scores at its best
  epoch, its own decode's test scores): sort by `{metric}` to rank the trainings. `orch export {name}
  --register` registers the best as `models:/{name}@champion`.
- **Charts**: `orch ui` prints this experiment's chart view (`?viewStateShareKey={VIEW}`, which
  charts every run, not only the first 10 rows); MLflow folds each run's children under it: expand
  the parent run's row (its ⊞) to chart every training. Elsewhere, the eye menu's *Show all runs*.""",
                                 "orch.trainer": trainer, "orch.select_by": metric,
                                 VIEW_TAG: json.dumps(VIEW_STATE)})


# ------------------------------------------------------------------- MLflow's own fields of a run
def standard_tags(source: str) -> dict[str, str]:
    """The tags the MLflow UI shows as a run's Source, Version and User: `source` is the command
    that made the run (e.g. `orch run quickstart.yaml`); the commit carries no '+dirty' (MLflow
    shows it as a commit link), `orch.git_commit` keeps that mark."""
    import getpass

    from mlflow.utils.mlflow_tags import (MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE,
                                          MLFLOW_USER)

    tags = {MLFLOW_SOURCE_NAME: source, MLFLOW_SOURCE_TYPE: "LOCAL"}
    commit = git_commit().removesuffix("+dirty")
    if commit != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit
    try:
        tags[MLFLOW_USER] = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (some containers)
        pass
    return tags


def prepared_dataset(prepared: str | Path) -> Optional[dict]:
    """The prepared dataset as an MLflow dataset (name, digest, source, profile), for `mlflow.log_input`:
    its digest is the manifest's (same data, same digest), its source the folder. None when the
    folder holds no readable manifest."""
    import hashlib
    import json

    from trainers.data.prepared import MANIFEST, read_manifest
    from trainers.errors import InputError

    folder = Path(prepared)
    try:
        manifest = read_manifest(folder)
    except InputError:
        return None
    profile = {"vocab_size": manifest.vocab_size, **{f"{split}_images": counts.images
                                                    for split, counts in manifest.splits.items()}}
    return {"name": manifest.dataset, "digest": hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()[:16],
            "source_type": "local", "source": json.dumps({"uri": str(folder.resolve())}),
            "profile": json.dumps(profile)}


def _markdown_table(what: str, keys: list[str], rows: list[tuple[str, dict]]) -> list[str]:
    """A Markdown table of each row's values of `keys` (none when no key varies), then a blank line."""
    if not keys:
        return []
    return ["| " + what + " | " + " | ".join(f"`{key}`" for key in keys) + " |", "|---|" + "---|" * len(keys),
            *[f"| {id_} | " + " | ".join(str(values.get(key, "")) for key in keys) + " |" for id_, values in rows], ""]


def plan_markdown(plan: dict) -> str:
    """The plan as the parent run's description (MLflow renders `mlflow.note.content` as Markdown)."""
    reference = plan["reference_decode"]
    lines = [f"**{plan['name']}**: {plan['n_trainings']} trainings x {len(plan['decode_variants'])} decode variants "
             f"= {plan['n_evaluations']} evaluations.", ""]
    lines += _markdown_table("training", plan["varying_keys"], [(c["id"], c["overrides"]) for c in plan["cells"]])
    lines += _markdown_table("decode variant", plan["decode_keys"],
                             [(v["id"], v["params"]) for v in plan["decode_variants"]])
    if plan.get("search_space"):
        lines += [f"Search over {', '.join(f'`{key}`' for key in plan['search_space'])}, "
                  f"{plan['samples_per_cell']} samples per training cell.", ""]
    lines.append(f"Every training is steered by its own decode section, the reference decode "
                 f"(variant {reference['variant']}): a trial run's `val/*` metrics per epoch are its.")
    return "\n".join(lines)
