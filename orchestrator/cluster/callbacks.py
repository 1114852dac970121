"""Ray Tune callbacks of the `orch run` driver: MLflow recording and the live trial table.

Ray pickles the run config, callbacks included, into its experiment folder; orch never reads that
back (`orch resume` starts fresh Tuners: orchestrator.cluster.studies). What they pickle is plain
data: the driver's tracker and the live console are left out, and the runs are found again by their tags.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ray.tune import Callback, Stopper
from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator import terminal
from orchestrator.cluster.trainable import trial_key, trial_params
from orchestrator.experiment.keys import apply_overrides, flatten
from orchestrator.experiment.plan import Plan
from orchestrator.ids import labelled, run_name, training_id, variant_id
from orchestrator.reporting.tables import truncation_note
from orchestrator.terminal import duration
from orchestrator.tracking.provenance import prepared_dataset
from orchestrator.tracking.recorder import TrialRecorder
from orchestrator.tracking.writer import Tracker


def trial_overrides(trial_config: dict, cells: dict[str, dict]) -> dict:
    """The dotted training keys a trial sets: its grid cell's, then its search sample's."""
    trial_config = trial_params(trial_config)
    return {**cells[trial_config["cell"]], **trial_config.get("search", {})}


def trial_id(trial) -> str:
    """The trial's training id (orchestrator.ids): `c002`, or `c002-<Ray trial id>` for a search sample."""
    return training_id(trial_params(trial.config)["cell"], trial_key(trial.config, trial.trial_id))


class MlflowRecorder(Callback):
    """Writes every trial of the driver to MLflow through the driver's own tracker: one writer, one
    journal, one order of writes, so sqlite never contends."""

    def __init__(self, tracker: Tracker, parent: str, run_key: str, base: dict, cells: dict[str, dict],
                 variants: dict[str, dict], decode_values: dict[str, dict], reference: str = "",
                 dataset: Optional[dict] = None):
        """`variants`: each decode variant's whole decode section; `decode_values`: the grid values it sets.
        `reference`: the plan's reference variant; `dataset`: provenance.prepared_dataset of the data."""
        self.tracker, self.parent, self.run_key = tracker, parent, run_key
        self.base, self.cells, self.variants, self.decode_values = base, cells, variants, decode_values
        self.reference, self.dataset = reference, dataset
        self._recorders: dict[str, TrialRecorder] = {}
        self._last: dict[str, dict] = {}
        self.failures: dict[str, str] = {}  # training id -> the last line of the error it ended with
        self.disk_full: Optional[str] = None  # `disk full: PATH` once a trial ran out of space: the run stops

    def __getstate__(self) -> dict:
        return {**self.__dict__, "tracker": None, "_recorders": {}, "_last": {}}

    def _recorder(self, trial) -> TrialRecorder:
        if trial.trial_id not in self._recorders:
            overrides = trial_overrides(trial.config, self.cells)
            params = flatten(apply_overrides(self.base, overrides))
            params["orch.cell"] = trial_params(trial.config)["cell"]
            training = trial_id(trial)
            names = {vid: run_name(variant_id(training, vid), values) for vid, values in self.decode_values.items()}
            dataset = self.dataset if "data.prepared" not in overrides else prepared_dataset(params["data.prepared"])
            self._recorders[trial.trial_id] = TrialRecorder(self.tracker, self.parent, self.run_key,
                                                            trial_key(trial.config, trial.trial_id),
                                                            run_name(training, overrides), params, self.variants,
                                                            variant_names=names, reference=self.reference,
                                                            dataset=dataset)
        return self._recorders[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._recorder(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._recorder(trial).record(result)
        self._last[trial.trial_id] = dict(result)

    def on_trial_recover(self, iteration, trials, trial, **info):
        recorder = self._recorder(trial)
        self.tracker.set_tags(recorder.run_id, {"orch.retries": trial.num_failures,
                                                "orch.last_error": self._failed(trial)})

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = self._last.get(trial.trial_id, {})
        if self.disk_full and not last.get("final"):  # stopped for the full disk: `orch resume` continues it
            self._recorder(trial).end("FAILED", self.disk_full)
            return
        with _local_checkpoint(trial) as checkpoint:
            if last.get("final"):
                self._recorder(trial).complete(last, checkpoint)
            else:
                epoch = last.get("epoch", 0)
                self._recorder(trial).complete(last, checkpoint, status="KILLED",
                                               reason=f"stopped early by the scheduler after epoch {epoch:.0f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = self._failed(trial)
        self.failures[trial_id(trial)] = reason  # out of retries: the driver's summary names it
        self._recorder(trial).end("FAILED", reason)

    def _failed(self, trial) -> str:
        """The trial's error in one line (a retry's too); Ray's pickle of it is dropped unread (nothing
        from storage is unpickled: a pickle cut short on a full disk broke Ray's result grid)."""
        if trial.run_metadata.pickled_error_filename is not None:
            Path(trial.pickled_error_file).unlink(missing_ok=True)
            trial.run_metadata.pickled_error_filename = None
        reason = _error_text(trial)
        if DISK_FULL in reason:
            reason = reason[reason.index(DISK_FULL):]
            self.disk_full = self.disk_full or reason
        return reason


DISK_FULL = "disk full: "  # trainers.errors.DiskFull's message


class StopWhenDiskFull(Stopper):
    """Stops every trial once one ran out of space: the others would fail on the same disk, each after
    its retries, and a resume after space is freed continues them all from their last whole epoch."""

    def __init__(self, recorder: MlflowRecorder):
        self.recorder = recorder

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.recorder.disk_full is not None


def _error_text(trial) -> str:
    """The last line of the trial's error: the exception and its message."""
    text = ""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:2000] if lines else "the trial failed (no error text)"


class _local_checkpoint:
    """The trial's latest checkpoint as a local folder (downloaded when storage is remote)."""

    def __init__(self, trial):
        self.checkpoint = getattr(trial, "checkpoint", None)
        self._context = None

    def __enter__(self) -> Optional[Path]:
        if self.checkpoint is None:
            return None
        self._context = self.checkpoint.as_directory()
        return Path(self._context.__enter__())

    def __exit__(self, *exc):
        if self._context is not None:
            self._context.__exit__(*exc)
        return False


class LiveTable(Callback):
    """One live table (trial, varying params, epoch k/N, metric, elapsed, ETA, status) instead of a
    wall of logs; without a terminal, one progress line per trial and epoch with the same fields."""

    def __init__(self, plan: Plan, metric: str, cells: dict[str, dict], base: dict):
        self.metric, self.cells, self.base = metric, cells, base
        self.title = f"{plan.name}: {plan.n_trainings} trainings x {len(plan.decode_variants)} decode variants"
        self._live: Optional[Live] = None
        self._shown = 0.0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_live": None, "_shown": 0.0}

    def _progress(self, trial, result: dict) -> dict[str, str]:
        """What the table and the progress line show of a trial's latest result."""
        overrides = trial_overrides(trial.config, self.cells)
        epochs = apply_overrides(self.base, overrides)["train"]["epochs"]
        epoch, elapsed = result.get("epoch", 0), result.get("time_total_s")
        value = result.get(self.metric)
        eta = elapsed / epoch * max(epochs - epoch, 0) if elapsed is not None and epoch else None
        return {"trial": trial_id(trial), "params": labelled(overrides), "epoch": f"{epoch:.0f}/{epochs}",
                "metric": "-" if value is None else f"{value:.3f}", "elapsed": duration(elapsed),
                "eta": duration(eta), "cut": truncation_note(result, "val")}

    def _table(self, trials) -> Table:
        table = Table("id", "params", "epoch", self.metric, "elapsed", "ETA", "status", title=self.title)
        for trial in trials:
            shown = self._progress(trial, trial.last_result or {})
            table.add_row(shown["trial"], shown["params"], shown["epoch"], shown["metric"], shown["elapsed"],
                          shown["eta"], trial.status + (f" ({shown['cut']})" if shown["cut"] else ""))
        return table

    @property
    def console(self) -> Console:
        return terminal.console(stderr=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """Without a terminal (CI, a log file) a live table cannot redraw: print one line per epoch."""
        if self.console.is_terminal:
            return
        shown = self._progress(trial, result)
        cut = f" ({shown['cut']})" if shown["cut"] else ""
        self.console.print(f"{shown['trial']} {shown['params']}: epoch {shown['epoch']}, {self.metric} "
                           f"{shown['metric']}, elapsed {shown['elapsed']}, ETA {shown['eta']}{cut}", highlight=False)

    def on_step_end(self, iteration, trials, **info):
        if not self.console.is_terminal or time.monotonic() - self._shown < 1.0:
            return
        self._shown = time.monotonic()
        if self._live is None:
            self._live = Live(self._table(trials), console=self.console, refresh_per_second=2,
                              transient=False)
            self._live.start()
        else:
            self._live.update(self._table(trials))

    def on_experiment_end(self, trials, **info):
        if self._live is not None:
            self._live.update(self._table(trials))
            self._live.stop()
            self._live = None
