"""`orch train CONFIG`: one configuration, in this process, no Ray; tracked in MLflow like any trial."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from orchestrator.credentials import masked
from orchestrator.experiment.keys import flatten
from orchestrator.experiment.loader import dump_resolved
from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.reporting.tables import truncation_note
from orchestrator.lease import DriverLease, refuse_a_live_driver
from orchestrator.settings import RunSettings
from orchestrator.storage import CONFIG_FILE, Storage
from orchestrator.terminal import duration
from orchestrator.tracking.cost import TrialMeter, log_totals
from orchestrator.tracking.provenance import describe_experiment, log_provenance, prepared_dataset, standard_tags
from orchestrator.tracking.recorder import TrialRecorder
from orchestrator.tracking.writer import Tracker
from trainers.config import OWN_DECODE_ID
from trainers.data.prepared import check_prepared
from trainers.errors import InputError
from trainers.metrics import SCORE_SCALE

TRIAL = "t000"  # the one training's id (orchestrator.ids): its MLflow run's name; t000-d01 names its variant's
EPOCH_COLUMNS = [("epoch", "epoch", "{:.0f}"), ("train loss", "train_loss", "{:.3f}"), ("val loss", "val_loss", "{:.3f}"),
                 ("val BLEU-4", "val_Bleu_4", "{:.3f}"), ("val CIDEr", "val_CIDEr", "{:.3f}"),
                 ("time (s)", "epoch_time_s", "{:.1f}")]
ALIGNMENT_COLUMNS = [*EPOCH_COLUMNS[:3], ("val R@1 i2t", "val_i2t_R1", "{:.1f}"), ("val R@1 t2i", "val_t2i_R1", "{:.1f}"),
                     ("val rsum", "val_rsum", "{:.1f}"), EPOCH_COLUMNS[-1]]  # trainer: alignment
FINAL_KEYS = ["test_Bleu_1", "test_Bleu_2", "test_Bleu_3", "test_Bleu_4", "test_METEOR", "test_ROUGE_L",
              "test_CIDEr", "test_mean_caption_length", "test_distinct_captions", "test_content_accuracy",
              "test_position_accuracy",
              *[f"test_{d}_{m}" for d in ("i2t", "t2i") for m in ("R1", "R5", "R10", "medr")], "test_rsum",
              "test_snippet_accuracy", "test_region_caption_accuracy"]


def train_refusal(config: ExperimentConfig) -> str | None:
    """Why `orch train` refuses a config with a grid or a search, and the --set options that train one
    configuration of it; None for a config it trains."""
    if not config.ablation and config.search is None:
        return None
    has = " and ".join(what for what, present in (("an ablation grid", config.ablation),
                                                   ("a search", config.search is not None)) if present)
    drop = " ".join(option for option, present in (("--set 'ablation={}'", config.ablation),
                                                    ("--set search=null", config.search is not None)) if present)
    keys = [*config.ablation, *(config.search.space if config.search is not None else {})]
    example = " ".join(f"--set {key}=VALUE" for key in keys[:2]) + (" ..." if len(keys) > 2 else "")
    return (f"'{config.name}' has {has}, which `orch train` does not run: run it with `orch run`, or train one "
            f"configuration with {drop} plus a --set of each value you want ({example})")


def _row(metrics: dict, columns: list = EPOCH_COLUMNS) -> list[str]:
    return [fmt.format(metrics[key]) if key in metrics else "-" for _, key, fmt in columns]


def train_one(settings: RunSettings, console: Console) -> dict:
    """Train the settings' config (no ablation grid) and return the final summary `orch train --json`
    prints. Settings of an existing invocation (`train-...`): `orch resume` of a killed
    `orch train`, which continues from the run folder's checkpoint (the last whole epoch) and logs to
    the same MLflow runs."""
    config = settings.config
    refusal = train_refusal(config)
    if refusal:
        raise InputError(refusal)
    trainer_config = config.trainer_config({})
    check_prepared(trainer_config.model_dump(mode="json")["data"])  # refused before any store or folder is made
    if trainer_config.train.device == "cuda":  # no usable CUDA: refused as early, in one line (trainers.devices)
        from trainers.devices import pick_device

        pick_device("cuda")
    storage, folder = settings.storage, settings.folder
    if settings.resuming:  # its driver may live on: refused before anything is opened (orchestrator.lease)
        refuse_a_live_driver(storage, folder)
    # The store first: one that cannot be opened is refused before the run folder is made.
    tracker = Tracker(settings.tracking_uri, settings.experiment, artifact_root=storage)
    # A bucket storage gets the run folder after every epoch; it lives on this machine's disk meanwhile.
    run_dir = settings.driver_folder
    resuming = storage.is_file(f"{folder}/{CONFIG_FILE}")
    if resuming and not storage.is_local and _resume_point(run_dir, trainer_config.train.epochs) is None:
        storage.download(folder, run_dir.parent)  # resumed on another machine than the one that ran it
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        (run_dir / CONFIG_FILE).write_text(dump_resolved(config))  # what `orch resume` re-reads
    tracker.use_journal(settings.journal)
    upload = RunFolderUpload(storage, run_dir, folder)
    with DriverLease.acquire(storage, folder, "orch resume" if resuming else "orch train"):
        try:
            return _train(settings, trainer_config, tracker, run_dir, resuming, upload, console)
        finally:
            upload()


class RunFolderUpload:
    """Copies the run folder to a bucket storage after each whole epoch (a local storage holds it already).

    The files that changed go up one object at a time, the checkpoint's last and its meta.json (which
    says which epoch it holds) at the very end: a driver killed mid-upload leaves the bucket a whole
    checkpoint, of this epoch or the one before."""

    LAST = ("checkpoint/best_model.pt", "checkpoint/training_state.pt", "checkpoint/meta.json")

    def __init__(self, storage: Storage, run_dir: Path, folder: str):
        self.storage, self.run_dir, self.folder = storage, run_dir, folder
        self._sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) uploaded

    def __call__(self) -> None:
        if self.storage.is_local:
            return
        changed = {}
        for path in sorted(self.run_dir.rglob("*")):
            stat = path.stat()
            relative = path.relative_to(self.run_dir).as_posix()
            if path.is_file() and self._sent.get(relative) != (stat.st_size, stat.st_mtime_ns):
                changed[relative] = (stat.st_size, stat.st_mtime_ns)
        order = sorted(changed, key=lambda name: self.LAST.index(name) + 1 if name in self.LAST else 0)
        for relative in order:
            self.storage.upload(self.run_dir / relative, f"{self.folder}/{relative}")
            self._sent[relative] = changed[relative]


def _resume_point(run_dir: Path, epochs: int) -> Optional[Path]:
    """The run folder's checkpoint when it holds a whole epoch short of the last (trainers.checkpoint)."""
    from trainers.checkpoint import resume_point

    return resume_point([run_dir / "checkpoint"], epochs)


def _replay_unrecorded_epochs(recorder: TrialRecorder, checkpoint: Path) -> None:
    """Log the epochs the checkpoint holds that MLflow never got (the process died between writing the
    checkpoint and logging the epoch), from the checkpoint's own history, so no epoch is missing."""
    from trainers.checkpoint import load_checkpoint

    for metrics in load_checkpoint(checkpoint).training_state()["history"][int(recorder.logged_epoch):]:
        recorder.record(metrics)


def _train(settings: RunSettings, trainer_config, tracker: Tracker, run_dir: Path, resuming: bool,
           upload: RunFolderUpload, console: Console) -> dict:
    import torch

    from trainers.evaluation import DecodeVariant
    from trainers.training import run_training

    config, storage, folder, run_key = settings.config, settings.storage, settings.folder, settings.run_key
    stamp = settings.invocation.removeprefix("train-")
    resume_from = None
    if resuming:
        if not tracker.flush():
            raise InputError(f"tracking.uri: the MLflow server {masked(tracker.uri)} does not take the journaled writes of "
                             f"{tracker.journal.path}; start it and resume again")
        tracker.repair_orphans()  # the killed `orch train` left its runs RUNNING
        done = [run for run in tracker.runs(invocation=run_key, kind="trial") if run.info.status == "FINISHED"]
        if done:
            raise InputError(f"{storage.uri(folder)}: this training already finished (MLflow run "
                             f"{done[0].info.run_id}); nothing to resume")
        resume_from = _resume_point(run_dir, trainer_config.train.epochs)
        console.print(f"resuming {storage.uri(folder)} from "
                      f"{'its epoch checkpoint' if resume_from else 'the start (no whole checkpoint to continue)'}",
                      highlight=False)
    tracker.run_tags = standard_tags(f"orch train {config.name}")
    parent = tracker.parent_run(run_key, f"orch train {stamp}", {"orch.results": storage.uri(folder)})
    dataset = prepared_dataset(trainer_config.data.prepared)
    if not resuming:
        log_provenance(tracker, parent, dump_resolved(config), plan=None, dataset=dataset,
                       description=f"`orch train`: one training of **{config.name}**, in one process (no Ray).")
        describe_experiment(tracker, config.name, trainer_config.trainer, trainer_config.eval.select_by)
    variants = [DecodeVariant(OWN_DECODE_ID, trainer_config.decode)]
    recorder = TrialRecorder(tracker, parent, run_key, TRIAL, TRIAL,
                             params=flatten(trainer_config.model_dump(mode="json")),
                             variants={OWN_DECODE_ID: {f"decode.{k}": v for k, v in trainer_config.decode.model_dump().items()}},
                             reference=OWN_DECODE_ID, dataset=dataset)
    meter = TrialMeter(gpus=1.0 if trainer_config.train.device != "cpu" else 0.0, cpus=float(torch.get_num_threads()))
    if resume_from is not None:
        _replay_unrecorded_epochs(recorder, resume_from)
    columns = ALIGNMENT_COLUMNS if trainer_config.trainer == "alignment" else EPOCH_COLUMNS
    table = Table(*[title for title, _, _ in columns], title=f"orch train {config.name}", caption_justify="left",
                  caption=SCORE_SCALE if columns is EPOCH_COLUMNS else None)

    epochs = trainer_config.train.epochs
    since = {"time": time.monotonic()}  # this process's first epoch and its start: what elapsed and ETA count

    def on_epoch(result) -> None:
        report = {**result.as_report(), **meter.fields(result.metrics)}
        recorder.record(report)
        if result.final:
            recorder.complete(report, result.checkpoint)
        else:  # the final epoch's folder goes up when the training ends
            upload()
        cut = truncation_note(result.metrics, "val")
        since.setdefault("epoch", result.epoch)
        elapsed = time.monotonic() - since["time"]
        eta = elapsed / (result.epoch - since["epoch"] + 1) * (epochs - result.epoch)  # a bound if it stops early
        cells = zip(columns[1:], _row(result.metrics, columns)[1:])
        console.print(f"{TRIAL}: epoch {result.epoch}/{epochs}  " + "  ".join(f"{title}={cell}" for (title, _, _), cell in cells)
                      + f"  elapsed {duration(elapsed)}, ETA {duration(eta)}" + (f"  ({cut})" if cut else ""),
                      highlight=False)
        table.add_row(*_row(result.metrics, columns))

    status, reason = "FAILED", ""
    try:
        final = run_training(trainer_config, run_dir, variants=variants, on_epoch=on_epoch, progress=True,
                             resume_from=resume_from)
        status = "FINISHED"
    except KeyboardInterrupt:
        status, reason = "KILLED", "interrupted (Ctrl-C)"
        raise
    except Exception as error:  # the run fails; MLflow must say so before we re-raise
        reason = f"{type(error).__name__}: {error}"
        raise
    finally:
        meter.close()
        recorder.end(status, reason)
        log_totals(tracker, parent, run_key)
        if dataset is None:  # the training prepared it itself (auto-prepared data): it exists now
            tracker.log_input(parent, prepared_dataset(trainer_config.data.prepared))
        tracker.end(parent, status, reason)
        if tracker.away:
            if not tracker.settle():
                console.print(f"MLflow server {masked(tracker.uri)} did not come back: {len(tracker.journal.pending())} "
                              f"tracking write(s) are kept in order in {tracker.journal.path}; `orch resume "
                              f"{shlex.quote(storage.locate(folder))}` replays them once it answers", highlight=False)
        if status != "FINISHED":
            console.print(f"continue it with `orch resume {shlex.quote(storage.locate(folder))}`", highlight=False)
    console.print(table)
    summary = {key: value for key, value in final.metrics.items()
               if key in FINAL_KEYS or key.startswith("test_constant_caption_")}
    summary.update(mean_caption_length=final.metrics.get("test_mean_caption_length"),
                   distinct_captions=final.metrics.get("test_distinct_captions"),
                   predictions=_stored_as(storage, folder, run_dir, Path(final.predictions[OWN_DECODE_ID])),
                   best_epoch=final.metrics["best_epoch"], stop_reason=final.stop_reason, results=storage.uri(folder),
                   mlflow_run_id=recorder.run_id)
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    scores = (f"test R@1 i2t {summary.get('test_i2t_R1', float('nan')):.1f}, t2i "
              f"{summary.get('test_t2i_R1', float('nan')):.1f}; alignments" if trainer_config.trainer == "alignment" else
              f"test CIDEr {summary.get('test_CIDEr', float('nan')):.3f}, BLEU-4 "
              f"{summary.get('test_Bleu_4', float('nan')):.3f}; captions")
    console.print(f"{scores}: {summary['predictions']}; MLflow: {masked(settings.tracking_uri)} (`orch ui`)", highlight=False)
    return summary


def _stored_as(storage: Storage, folder: str, run_dir: Path, path: Path) -> str:
    """Where a file of the run folder ends up on the storage (a local path, or its bucket URI)."""
    try:
        return storage.uri(f"{folder}/{path.resolve().relative_to(run_dir.resolve()).as_posix()}")
    except ValueError:  # outside the run folder: it stays where it is
        return str(path)
