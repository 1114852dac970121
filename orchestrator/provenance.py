"""What a parent run records so a result can be traced back: the YAML, the plan, code and packages."""

from __future__ import annotations

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


def log_provenance(tracker, run_id: str, resolved_yaml: str, plan: Optional[dict]) -> None:
    """Attach the resolved config, the plan, the git commit and package versions to a parent run."""
    tracker.log_text(run_id, resolved_yaml, "config/resolved.yaml")
    if plan is not None:
        tracker.log_json(run_id, plan, "config/plan.json")
    versions = package_versions()
    tracker.log_json(run_id, versions, "environment/packages.json")
    tracker.set_tags(run_id, {"orch.git_commit": git_commit(), **{f"orch.version.{k}": v for k, v in versions.items()}})
