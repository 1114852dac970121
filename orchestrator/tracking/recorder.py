"""The MLflow side of one training: its trial run and a nested run per decode variant, written from
the flat per-epoch reports a trainer emits (docs/architecture.md, "The MLflow layout")."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Mapping, Optional

from orchestrator.ids import variant_id
from orchestrator.tracking.names import (BEST_CHECKPOINT, CAPTIONER_MODEL, TAG_DETERMINISTIC, TRIAL_METRIC,
                                         mlflow_metric)
from orchestrator.tracking.writer import Tracker

def _predictions_file(report: Mapping[str, object], checkpoint: Optional[Path], variant: str) -> Optional[Path]:
    """A variant's test captions: inside the final checkpoint (it travels to storage), else the path reported."""
    candidates = [Path(checkpoint) / "predictions" / f"test_{variant}.json"] if checkpoint is not None else []
    reported = json.loads(str(report.get("predictions_json") or "{}")).get(variant)
    if reported:
        candidates.append(Path(reported))
    return next((path for path in candidates if path.is_file()), None)



class TrialRecorder:
    """The MLflow side of one training trial: its run, one nested run per decode variant.

    It consumes the flat per-epoch reports a trainer emits (`EpochResult.as_report()`, with the cost
    meter's fields), whether they arrive in-process (`orch train`) or through Ray Tune to the driver
    (`orch run`). The trial run holds what it trained with (no `decode.*` key: those, and their
    metrics, are the variant runs'); its validation scores per epoch (`val/…`, `mlflow_metric`) are
    the reference decode's, named by the tag `orch.reference_variant` and in its description.
    """

    def __init__(self, tracker: Tracker, parent: str, invocation: str, trial: str, run_name: str,
                 params: Mapping[str, object], variants: Mapping[str, Mapping[str, object]],
                 *, variant_names: Optional[Mapping[str, str]] = None, reference: str = "",
                 dataset: Optional[Mapping[str, str]] = None):
        """`variant_names`: each variant's run name (orchestrator.ids); by default its id under `trial`.
        `reference`: the variant id of the training's own decode section (plan.reference_variant).
        `dataset`: the prepared dataset as provenance.prepared_dataset gives it."""
        from orchestrator.tracking.cost import COST_METRICS, PEAK_HOST_METRIC

        self.tracker = tracker
        training = {k: v for k, v in params.items() if not k.startswith("decode.")}
        self.run_id, before = tracker.trial_run(parent, invocation, trial, run_name, training)
        if before is None:
            decode = ", ".join(f"{label} {params[key]}" for key, label in (("decode.beam_size", "beam"),
                                                                            ("decode.length_penalty", "β"))
                               if key in params)
            tracker.describe(self.run_id, f"Training {run_name} ({params.get('orch.cell', trial)}): its val/* per epoch "
                                          f"are decode variant {reference or '?'}'s, the training's own decode section "
                                          f"({decode}); every variant's scores are in the runs nested under it.")
            tracker.set_tags(self.run_id, {"orch.reference_variant": reference})
            tracker.log_input(self.run_id, dataset)
        # Data the trial prepares itself (the quickstart's synthetic set) is a dataset only once it has:
        # logged with the first epoch then. A dataset logged twice is kept once (Tracker._apply).
        self.unlogged_dataset = params.get("data.prepared") if dataset is None and not before else None
        self.variant_runs = {
            vid: tracker.variant_run(self.run_id, invocation, trial, vid,
                                     (variant_names or {}).get(vid) or variant_id(trial, vid), {**params, **decode_params})
            for vid, decode_params in variants.items()}
        # Finished under an earlier driver: left exactly as it is. Continued: its epochs already
        # logged are not logged again when Tune restores a checkpoint older than the last report,
        # and its cost so far is added to.
        self.closed = before == "FINISHED"
        logged = tracker.client.get_run(self.run_id).data.metrics if before else {}
        self.logged_epoch = logged.get("epoch", 0)
        self.cost_before = {k: v for k, v in logged.items() if k in (*COST_METRICS, PEAK_HOST_METRIC)}
        self.started_at = time.time()  # Tune started the trial (or `orch train` its training)
        self.cost: dict[str, float] = {}
        self._device_tagged = False
        self._determinism_tagged = False

    def record(self, report: Mapping[str, object]) -> None:
        """Log one epoch's metrics, cost so far and system metrics on the trial run and each variant
        run's, with step = epoch.

        Only the trainer's own metrics are logged, not the bookkeeping Ray adds to a result.
        """
        from orchestrator.tracking.cost import FIELD, TAG_COST_DEVICE, system_metrics, trial_cost

        epoch = int(report["epoch"])
        if self.closed or epoch <= self.logged_epoch:
            return
        if self.unlogged_dataset:
            from orchestrator.tracking.provenance import prepared_dataset

            self.tracker.log_input(self.run_id, prepared_dataset(self.unlogged_dataset))
            self.unlogged_dataset = None
        if report.get("deterministic") and not self._determinism_tagged:  # trainers.determinism's verdict
            self.tracker.set_tags(self.run_id, {TAG_DETERMINISTIC: report["deterministic"]})
            self._determinism_tagged = True
        own = {k: v for k, v in report.items() if TRIAL_METRIC.match(k)}
        if f"{FIELD}began" in report:
            self.cost = trial_cost(report, self.started_at, self.cost_before)
            if not self._device_tagged:
                self.tracker.set_tags(self.run_id, {TAG_COST_DEVICE: report[f"{FIELD}device"]})
                self._device_tagged = True
        self.tracker.log_metrics(self.run_id, {**{mlflow_metric(k): v for k, v in own.items()}, **self.cost,
                                               **system_metrics(report)}, step=epoch)
        for vid, run_id in self.variant_runs.items():
            prefix = f"{vid}/"
            self.tracker.log_metrics(run_id, {mlflow_metric(k[len(prefix):]): v for k, v in report.items()
                                              if k.startswith(prefix)}, step=epoch)
        self.logged_epoch = epoch

    def complete(self, report: Mapping[str, object], checkpoint: Optional[Path],
                 status: str = "FINISHED", reason: str = "") -> None:
        """Attach the best checkpoint (also as an MLflow model), sample captions and test predictions,
        then end the runs."""
        if self.closed:
            return
        samples = json.loads(str(report.get("samples_json") or "[]"))
        self.tracker.log_json(self.run_id, samples, "sample_captions.json")
        # A captioner's best checkpoint is stored once, inside its MLflow model (orch export reads it
        # there); a trial that is not a captioner (alignment) keeps it as the artifact best_checkpoint/.
        if checkpoint is not None and not self._log_model(Path(checkpoint),
                                                          int(report.get("best_epoch") or report.get("epoch") or 0)):
            for name in ("best_model.pt", "meta.json"):
                if (Path(checkpoint) / name).is_file():
                    self.tracker.log_file(self.run_id, Path(checkpoint) / name, BEST_CHECKPOINT)
        for vid, run_id in self.variant_runs.items():
            path = _predictions_file(report, checkpoint, vid)
            if path is not None:
                self.tracker.log_file(run_id, path, "predictions")
        self.tracker.set_tags(self.run_id, {"orch.stop_reason": report.get("stop_reason") or reason,
                                            "orch.reference_variant": report.get("reference_variant", "")})
        self.end(status, reason)

    def _log_model(self, checkpoint: Path, best_epoch: int) -> bool:
        """The best weights as an MLflow pyfunc model of the trial run (the UI's Models column offers
        Register): the checkpoint's files. False when the checkpoint is not a whole captioner's.

        A frozen encoder is not in them: loading rebuilds it (torchvision's weights, or a random one
        from its seed) and checks its hash. A random one is stored once per run, in the study's
        folder, not once per trial here: a torch that draws another init fails that check, saying so."""
        import tempfile

        meta_path = checkpoint / "meta.json"
        if not (checkpoint / "best_model.pt").is_file() or not meta_path.is_file():
            return False
        meta = json.loads(meta_path.read_text())
        if meta["config"].get("trainer", "captioner") != "captioner":
            return False  # an alignment model is not a captioner (orch export --metric rsum)
        from orchestrator.pyfunc import save_captioner

        with tempfile.TemporaryDirectory(prefix="orch-model-") as scratch:
            files = Path(scratch) / "checkpoint"
            files.mkdir()
            for name in ("best_model.pt", "meta.json"):
                shutil.copyfile(checkpoint / name, files / name)
            save_captioner(Path(scratch) / "model", files, meta["config"]["decode"])
            self.tracker.log_model(self.run_id, Path(scratch) / "model", CAPTIONER_MODEL, best_epoch)
        return True

    def end(self, status: str, reason: str = "") -> None:
        """End the trial run and its variant runs with one status (FINISHED, FAILED or KILLED)."""
        if self.closed:
            return
        for run_id in self.variant_runs.values():
            self.tracker.end(run_id, status, reason)
        self.tracker.end(self.run_id, status, reason)
        self.closed = True
