"""`orch run CONFIG`: the ablation grid and its search as Ray Tune trials, tracked in MLflow.

The experiment is loaded, its settings resolved once (orchestrator.settings) and its plan made;
`--dry-run` prints the plan with the settings it would run with and starts nothing. Otherwise the
data is checked, the plan shown, and the launcher runs it (orchestrator.cluster.launcher).
"""

from __future__ import annotations

from typing import Optional

from rich.console import Console

from orchestrator import terminal
from orchestrator.experiment.plan import make_plan, render_plan
from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.settings import RunSettings


def run(experiment: ExperimentConfig, console: Console, *, address: Optional[str] = None,
        dry_run: bool = False) -> int:
    """The exit code: 0 when every trial finished, 1 when one failed or the run was interrupted."""
    settings = RunSettings.resolve(experiment, address=address)
    plan = make_plan(experiment)
    if dry_run:
        terminal.console().print(render_plan(plan, experiment, settings.describe_ray()))
        return 0
    from orchestrator.cluster.launcher import check_data, run_plan

    check_data(experiment, plan)  # every cell's data.prepared, before the plan is shown and Ray starts
    console.print(render_plan(plan, experiment, settings.describe_ray()))
    return run_plan(settings, plan, console)
