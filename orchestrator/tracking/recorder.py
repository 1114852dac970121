"""The MLflow side of one training: its trial run and a nested run per decode variant, written from
the flat per-epoch reports a trainer emits (docs/architecture.md, "The MLflow layout")."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Mapping, Optional

from orchestrator.ids import training_id, variant_id
from orchestrator.tracking.names import (BEST_CHECKPOINT, CAPTIONER_MODEL, TAG_DETERMINISTIC, TRIAL_METRIC,
                                         mlflow_metric)
from orchestrator.tracking.params import decode_params, resolved_params, training_params
from orchestrator.tracking.writer import Tracker

def _predictions_file(report: Mapping[str, object], checkpoint: Optional[Path], variant: str) -> Optional[Path]:
    """A variant's test captions: inside the final checkpoint (it travels to storage), else the path reported."""
    candidates = [Path(checkpoint) / "predictions" / f"test_{variant}.json"] if checkpoint is not None else []
    reported = json.loads(str(report.get("predictions_json") or "{}")).get(variant)
    if reported:
        candidates.append(Path(reported))
    return next((path for path in candidates if path.is_file()), None)



class TrialRecorder:
    """The MLflow side of one training trial: its run, its logged model, one nested run per decode variant.

    It consumes the flat per-epoch reports a trainer emits (`EpochResult.as_report()`, with the cost
    meter's fields), whether they arrive in-process (`orch train`) or through Ray Tune to the driver
    (`orch run`). The trial run holds what it trained with (tracking.params: no `decode.*` key) and
    its learning curves: validation scores per epoch (`val/…`, `mlflow_metric`) of the reference
    decode, named by the tag `orch.reference_variant` and in its description. Its best checkpoint
    becomes one logged model, named after the training, with the training's params and its val
    (at the best epoch) and test scores. Each decode variant is an evaluation of that model: a run
    made when the evaluation ran, holding the variant's decode params and scores, linked to the model.
    """

    def __init__(self, tracker: Tracker, parent: str, invocation: str, trial: str, run_name: str,
                 params: Mapping[str, object], variants: Mapping[str, Mapping[str, object]],
                 *, variant_names: Optional[Mapping[str, str]] = None, reference: str = "",
                 dataset: Optional[Mapping[str, str]] = None):
        """`variant_names`: each variant's run name (orchestrator.ids); by default its id under `trial`.
        `reference`: the variant id of the training's own decode section (plan.reference_variant).
        `dataset`: the prepared dataset as provenance.prepared_dataset gives it."""
        from orchestrator.tracking.cost import COST_METRICS, PEAK_HOST_METRIC

        self.tracker, self.invocation, self.trial, self.run_name = tracker, invocation, trial, run_name
        self.training = training_params(params)
        self.run_id, before = tracker.trial_run(parent, invocation, trial, run_name, self.training)
        if before is None:
            decode = ", ".join(f"{label} {params[key]}" for key, label in (("decode.beam_size", "beam"),
                                                                            ("decode.length_penalty", "β"))
                               if key in params)
            tracker.describe(self.run_id, f"Training {run_name}: its val/* per epoch are decode variant "
                                          f"{reference or '?'}'s, the training's own decode section ({decode}). Its "
                                          f"best checkpoint is the logged model {self.model_name}; every decode "
                                          f"variant's scores are in the runs nested under it.")
            tracker.set_tags(self.run_id, {"orch.reference_variant": reference})
            tracker.log_input(self.run_id, dataset)
        # Data the trial prepares itself (the quickstart's synthetic set) is a dataset only once it has:
        # logged with the first epoch then. A dataset logged twice is kept once (Tracker._apply).
        self.unlogged_dataset = params.get("data.prepared") if dataset is None and not before else None
        self.variants, self.reference, self.dataset = variants, reference, dataset
        self.variant_names = dict(variant_names or {})
        self.variant_runs: dict[str, str] = {}  # made when the variants are evaluated (`complete`)
        # Finished under an earlier driver: left exactly as it is. Continued: its epochs already
        # logged are not logged again when Tune restores a checkpoint older than the last report,
        # and its cost so far is added to.
        self.closed = before == "FINISHED"
        logged_run = tracker.client.get_run(self.run_id).data if before else None
        logged = logged_run.metrics if logged_run else {}
        self.resolved = logged_run is not None and "train.device" in logged_run.params  # an earlier driver logged them
        self.logged_epoch = logged.get("epoch", 0)
        self.cost_before = {k: v for k, v in logged.items() if k in (*COST_METRICS, PEAK_HOST_METRIC)}
        self.started_at = time.time()  # Tune started the trial (or `orch train` its training)
        self.cost: dict[str, float] = {}
        self._device_tagged = False
        self._determinism_tagged = False

    @property
    def model_name(self) -> str:
        """The logged model's name: the training's id (`c002`, `c002-<Ray trial id>`)."""
        return training_id(str(self.training.get("orch.cell", "")), self.trial)

    def record(self, report: Mapping[str, object]) -> None:
        """Log one epoch's metrics, cost so far and system metrics on the trial run, with step = epoch;
        with the first, the device and autocast the trainer resolved, as params.

        Only the trainer's own metrics are logged, not the bookkeeping Ray adds to a result, and no
        decode's test scores: `complete` logs them once, on the run of the decode that scored them.
        """
        from orchestrator.tracking.cost import FIELD, meter_tags, system_metrics, trial_cost

        epoch = int(report["epoch"])
        if self.closed or epoch <= self.logged_epoch:
            return
        if self.unlogged_dataset:
            from orchestrator.tracking.provenance import prepared_dataset

            self.dataset = prepared_dataset(self.unlogged_dataset)
            self.tracker.log_input(self.run_id, self.dataset)
            self.unlogged_dataset = None
        if report.get("deterministic") and not self._determinism_tagged:  # trainers.determinism's verdict
            self.tracker.set_tags(self.run_id, {TAG_DETERMINISTIC: report["deterministic"]})
            self._determinism_tagged = True
        if not self.resolved and resolved_params(report):
            self.tracker.log_params(self.run_id, resolved_params(report))
            self.resolved = True
        own = {k: v for k, v in report.items() if TRIAL_METRIC.match(k) and not _decode_test_score(k)}
        if f"{FIELD}began" in report:
            self.cost = trial_cost(report, self.started_at, self.cost_before)
            if not self._device_tagged:
                self.tracker.set_tags(self.run_id, meter_tags(report))
                self._device_tagged = True
        self.tracker.log_metrics(self.run_id, {**{mlflow_metric(k): v for k, v in own.items()}, **self.cost,
                                               **system_metrics(report)}, step=epoch)
        self.logged_epoch = epoch

    def complete(self, report: Mapping[str, object], checkpoint: Optional[Path],
                 status: str = "FINISHED", reason: str = "") -> None:
        """Attach the sample captions and the best checkpoint (a captioner's as its logged model), record
        each decode variant's evaluation, then end the runs."""
        if self.closed:
            return
        samples = json.loads(str(report.get("samples_json") or "[]"))
        self.tracker.log_json(self.run_id, samples, "sample_captions.json")
        model_id = self._log_model(Path(checkpoint), report) if checkpoint is not None else None
        # A captioner's best checkpoint is stored once, inside its logged model (orch export reads it
        # there); a trial that is not a captioner (alignment) keeps it as the artifact best_checkpoint/.
        if checkpoint is not None and model_id is None:
            for name in ("best_model.pt", "meta.json"):
                if (Path(checkpoint) / name).is_file():
                    self.tracker.log_file(self.run_id, Path(checkpoint) / name, BEST_CHECKPOINT)
        if self.reference not in self.variants:  # the training's own decode is no variant (`ref`): its test scores
            self.tracker.log_metrics(self.run_id, {k: v for k, v in report.items() if _decode_test_score(k)},
                                     int(report["epoch"]), model_id=model_id, dataset=self.dataset)
        for vid in self.variants:
            if any(key.startswith(f"{vid}/") for key in report):
                self._record_variant(vid, report, checkpoint, model_id, status)
        self.tracker.set_tags(self.run_id, {"orch.stop_reason": report.get("stop_reason") or reason,
                                            "orch.reference_variant": report.get("reference_variant", "")})
        self.end(status, reason)

    def _record_variant(self, vid: str, report: Mapping[str, object], checkpoint: Optional[Path],
                        model_id: Optional[str], status: str) -> None:
        """One decode variant's run: made and ended when its evaluation ran, with the training's params and
        its decode keys, the dataset, its val and test scores of the best checkpoint (the reference's
        also as the model's) and its test captions, linked to the model it evaluated."""
        began = float(report.get("evaluation_began") or time.time())
        ended = began + float(report.get("evaluation_s") or 0.0)
        name = self.variant_names.get(vid) or variant_id(self.trial, vid)
        params = {**self.training, **resolved_params(report), **decode_params(self.variants[vid])}
        run_id = self.tracker.variant_run(self.run_id, self.invocation, self.trial, vid, name, params,
                                          start_ms=int(began * 1000))
        self.variant_runs[vid] = run_id
        best = report.get("best_epoch", report["epoch"])
        decoding = ", ".join(f"{key.removeprefix('decode.')} {value}"
                             for key, value in decode_params(self.variants[vid]).items())
        self.tracker.describe(run_id, f"Decode variant {vid} of training {self.run_name}: its best checkpoint (epoch "
                                      f"{best:.0f}, the logged model {self.model_name}) decoded on val and test with "
                                      f"{decoding}.")
        self.tracker.log_input(run_id, self.dataset, context="eval")
        if model_id is not None:
            self.tracker.link_model(run_id, model_id)
        prefix, step = f"{vid}/", int(report["epoch"])
        scores = {mlflow_metric(k[len(prefix):]): v for k, v in report.items() if k.startswith(prefix)}
        self.tracker.log_metrics(run_id, {k: v for k, v in scores.items() if not k.startswith("test_")}, step)
        self.tracker.log_metrics(run_id, {k: v for k, v in scores.items() if k.startswith("test_")}, step,
                                 model_id=model_id if vid == self.reference else None, dataset=self.dataset)
        path = _predictions_file(report, checkpoint, vid)
        if path is not None:
            self.tracker.log_file(run_id, path, "predictions")
        self.tracker.end(run_id, status, end_ms=int(ended * 1000))

    def _log_model(self, checkpoint: Path, report: Mapping[str, object]) -> Optional[str]:
        """The best weights as the trial's logged model, an MLflow pyfunc model (the Models page, the run's
        Models column, Register) named after the training, with its params, and its val scores at the best
        epoch linked to it; its id. None when the checkpoint is not a whole captioner's.

        A frozen encoder is not in the files: loading rebuilds it (torchvision's weights, or a random one
        from its seed) and checks its hash. A random one is stored once per run, in the study's
        folder, not once per trial here: a torch that draws another init fails that check, saying so."""
        import tempfile

        meta_path = checkpoint / "meta.json"
        if not (checkpoint / "best_model.pt").is_file() or not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        if meta["config"].get("trainer", "captioner") != "captioner":
            return None  # an alignment model is not a captioner (orch export --metric rsum)
        from orchestrator.pyfunc import save_captioner

        best_epoch = int(report.get("best_epoch") or report.get("epoch") or 0)
        with tempfile.TemporaryDirectory(prefix="orch-model-") as scratch:
            files = Path(scratch) / "checkpoint"
            files.mkdir()
            for name in ("best_model.pt", "meta.json"):
                shutil.copyfile(checkpoint / name, files / name)
            data = meta["config"]["data"]
            save_captioner(Path(scratch) / "model", files, meta["config"]["decode"],
                           example_image(data["prepared"], data["image_size"]))
            model_id = self.tracker.log_model(
                self.run_id, Path(scratch) / "model", self.model_name, best_epoch,
                params={**self.training, **resolved_params(report)}, model_type=CAPTIONER_MODEL,
                tags={"orch.invocation": self.invocation, "orch.trial": self.trial, "orch.best_epoch": best_epoch,
                      "orch.reference_variant": self.reference})
        self.tracker.link_step_metrics(self.run_id, model_id, best_epoch, "val/", self.dataset)
        return model_id

    def end(self, status: str, reason: str = "") -> None:
        """End the trial run with a status (FINISHED, FAILED or KILLED); its variant runs end with their evaluation."""
        if self.closed:
            return
        self.tracker.end(self.run_id, status, reason)
        self.closed = True


def _decode_test_score(key: str) -> bool:
    """A decode's test score (`test_CIDEr`), not the constant caption's baseline beside it."""
    return key.startswith("test_") and not key.startswith("test_constant_caption_")


def example_image(prepared: str, size: int) -> bytes:
    """A PNG the model ships as its input example: the first test image of its prepared dataset, or,
    where this machine cannot read that, a synthetic scene (trainers.data.synthetic) of its size."""
    import io

    import numpy as np
    from PIL import Image

    from trainers.data.prepared import PreparedDataset
    from trainers.data.synthetic import render_scene, sample_scene
    from trainers.errors import InputError

    try:
        pixels = PreparedDataset(prepared).split("test").images[0].transpose(1, 2, 0)  # (S, S, 3)
        image = Image.fromarray(np.ascontiguousarray(pixels))
    except (InputError, IndexError):
        rng = np.random.default_rng(0)
        image = render_scene(sample_scene(rng), size, rng)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
