"""One training run of one configuration: setup, train, evaluate, finish.

It knows nothing of Ray or MLflow: after every epoch it hands an `EpochResult` (metrics and the
checkpoint folder) to a callback, which `orch train` logs to MLflow and the Ray trainable reports
to Tune. The last epoch's result also carries the test split's metrics, decoded from the best
checkpoint, so a caller sees one stream of results.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Subset

from trainers import determinism
from trainers.batching import ImageGroupedBatches, encode_distinct
from trainers.compiled import Backend, CompiledSteps
from trainers.checkpoint import (frozen_encoder_meta, load_checkpoint, load_trainable, restore_rng_state, rng_state,
                                 save_checkpoint, store_random_encoder, trainable_state)
from trainers.config import OWN_DECODE_ID, REFERENCE_DECODE_ID, TrainConfig, TrainerConfig, selection_metric
from trainers.data.auto import ensure_prepared
from trainers.data.loaders import CaptionPairs, SplitImages, longest_first
from trainers.data.prepared import PreparedDataset
from trainers.devices import device_name, pick_device
from trainers.evaluation import (Captions, DecodeVariant, caption_batches, constant_caption_scores, score_split,
                                 write_predictions)
from trainers.errors import InputError, TrainingDiverged
from trainers.features import FeatureStore, cached_features, resize_batch
from trainers.losses import caption_loss
from trainers.models import build_captioner
from trainers.schedules import lr_factor_at, ss_rate_at

ACCELERATOR_CHECK_EVERY = 25  # batches between reads of the loss on an accelerator (each read syncs)


@dataclass
class EpochResult:
    epoch: int  # 1-based
    metrics: dict[str, float]  # train_loss, val_loss, val_<metric> (reference decode), lr, epoch_time_s, ...
    variant_metrics: dict[str, dict[str, float]]  # final only: decode variant id -> its val_* and test_*
    checkpoint: Path
    is_best: bool
    final: bool
    stop_reason: str = ""
    samples: list[dict] = field(default_factory=list)
    predictions: dict[str, Path] = field(default_factory=dict)  # variant id -> test captions file
    device: str = ""  # where it trained: cpu, cuda:0
    amp: str = ""  # the autocast it trained under: none, bf16, fp16 (train.amp resolved)
    deterministic: str = ""  # trainers.determinism: "yes: ..." or "no: ..."


    def as_report(self) -> dict:
        """A flat dict of numbers and strings: what Ray Tune carries to the driver.

        Variant metrics appear as `<variant>/<metric>` (e.g. `d02/val_CIDEr`).
        """
        report = {k: v for k, v in self.metrics.items()}
        for vid, metrics in self.variant_metrics.items():
            report.update({f"{vid}/{k}": v for k, v in metrics.items()})
        report.update(is_best=self.is_best, final=self.final, stop_reason=self.stop_reason, device=self.device, amp=self.amp,
                      deterministic=self.deterministic,
                      samples_json=json.dumps(self.samples),
                      predictions_json=json.dumps({k: str(v) for k, v in self.predictions.items()}))
        return report


EpochCallback = Callable[[EpochResult], None]


def default_variants(config: TrainerConfig) -> list[DecodeVariant]:
    return [DecodeVariant(OWN_DECODE_ID, config.decode)]


def reference_variant(config: TrainerConfig, variants: list[DecodeVariant]) -> DecodeVariant:
    """The decode setting that drives a training: its own `decode:` section, never the grid's decode
    keys. Named as the variant it equals, or `ref` when no variant does."""
    return next((v for v in variants if v.config == config.decode), DecodeVariant(REFERENCE_DECODE_ID, config.decode))


def autocast_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """`train.amp` on this device: `auto` is bf16 on a CUDA device that supports it, else none."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def amp_name(dtype: Optional[torch.dtype]) -> str:
    """`train.amp` as it ran: the autocast dtype's name, `none` without autocast."""
    return {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(t: TrainConfig, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """`train.optimizer` over the parameter groups. Adam and SGD run fused where torch has the kernel
    (CPU and CUDA): one pass over each weight per update instead of one per arithmetic operation."""
    fused = device.type in ("cpu", "cuda")
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=t.weight_decay, fused=fused)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=t.momentum, weight_decay=t.weight_decay, fused=fused)
    return torch.optim.RMSprop(groups, momentum=t.momentum, weight_decay=t.weight_decay)


class CaptionRecipe:
    """Holds the state of one run; `run()` reads top to bottom: setup, epochs, finish."""

    def __init__(self, config: TrainerConfig, run_dir: Path, variants: Optional[list[DecodeVariant]] = None,
                 on_epoch: Optional[EpochCallback] = None, progress: bool = False, compile_backend: Backend = "inductor"):
        """`compile_backend`: torch.compile's backend under `train.compile` (tests and benchmarks count graphs)."""
        self.config = config
        self.compile_backend = compile_backend
        self.compiled: Optional[CompiledSteps] = None
        self.run_dir = Path(run_dir)
        self.variants = variants or default_variants(config)
        self.reference = reference_variant(config, self.variants)
        self.on_epoch = on_epoch or (lambda result: None)
        self.progress = progress
        self.checkpoint_dir = self.run_dir / "checkpoint"

    # ----------------------------------------------------------------------------------- setup
    def setup(self, resume_from: Optional[Path] = None) -> None:
        cfg = self.config
        self._begin()
        self.model = build_captioner(cfg.model, len(self.vocab)).to(self.device)
        if self.device.type == "cuda":
            self.model.encoder.to(memory_format=torch.channels_last)
        # train.compile: the loss and the decoding step at fixed shapes (trainers.compiled)
        self.compiled = (CompiledSteps(self.model.decoder, self.device, cfg.train.batch_size, self.compile_backend)
                         if cfg.train.compile else None)
        self.use_cache = cfg.data.feature_cache and not self.model.encoder.trainable_parameters()
        self.inputs = self._input_arrays()
        self._loaders: dict[str, DataLoader] = {}
        self._shuffle = torch.Generator()  # reseeded every epoch (see _batches)
        self._ready_to_train(resume_from)

    def _begin(self) -> None:
        """What every recipe sets up first: the device and how reproducible it computes, autocast, the
        seed, the dataset and vocabulary."""
        cfg = self.config
        self.device = pick_device(cfg.train.device)
        self.determinism = determinism.apply(cfg.train.deterministic, self.device.type)
        self.autocast_dtype = autocast_dtype(cfg.train.amp, self.device)
        seed_everything(cfg.train.seed)
        self.dataset: PreparedDataset = ensure_prepared(cfg.data)
        self.vocab = self.dataset.vocab

    def _ready_to_train(self, resume_from: Optional[Path]) -> None:
        """What every recipe sets up last, its model built: the optimizer, the LR schedule, the gradient
        scaler, the epoch counters and the best weights so far, or all of them from a checkpoint."""
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_lr_schedule()
        fp16_on_cuda = self.autocast_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(enabled=fp16_on_cuda)
        self.start_epoch, self.best_score, self.best_epoch, self.stale_epochs = 1, -math.inf, 0, 0
        self.start_loss: Optional[float] = None
        self.history: list[dict] = []
        self.best_state = trainable_state(self.model)  # on the CPU, without a frozen encoder
        if resume_from is not None:
            self._resume(resume_from)

    def _input_arrays(self) -> dict[str, object]:
        """Per split, what its DataLoader reads per row: None (the images), or, when the encoder is
        frozen, the cached features' source; `self.stores` then holds each split's `FeatureStore`."""
        cfg = self.config
        self.stores: dict[str, FeatureStore] = {}
        if not self.use_cache:
            return {s: None for s in ("train", "val", "test")}
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.data.prepared) / "features"
        paths = cached_features(self.dataset, self.model.encoder, encoder_name=cfg.model.encoder,
                                image_size=cfg.data.image_size, encoded_size=cfg.model.encoded_size,
                                cache_dir=cache_dir, device=self.device, autocast=self.autocast_dtype)
        self.stores = {s: FeatureStore(path, self.device) for s, path in paths.items()}
        return {s: store.loader_source() for s, store in self.stores.items()}

    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.config.train
        return make_optimizer(t, self.model.param_groups(t.lr, t.encoder_lr), self.device)

    def _make_lr_schedule(self):
        s = self.config.train.lr_schedule
        if s.kind == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="max", factor=s.factor,
                                                              patience=s.patience)
        if s.kind == "step":
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda steps: lr_factor_at(steps + 1, s))  # epoch 1: 0 steps
        return None

    def _resume(self, folder: Path) -> None:
        checkpoint = load_checkpoint(folder)
        if checkpoint.meta.get("frozen_encoder", self.frozen_encoder) != self.frozen_encoder:
            raise InputError(f"{folder}: trained with another frozen encoder than this config builds "
                             f"({checkpoint.meta['frozen_encoder']['weights']})")
        state = checkpoint.training_state(self.device)
        if "optimizer" not in state:
            raise InputError(f"{folder}: the checkpoint of a training's last epoch ({state['epoch']}) keeps no "
                             f"optimizer state to train on from")
        load_trainable(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.best_state = checkpoint.best_model()
        self.start_epoch = state["epoch"] + 1
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.stale_epochs, self.start_loss = state["stale_epochs"], state["start_loss"]
        self.history = state["history"]
        restore_rng_state(state["rng"])

    # -------------------------------------------------------------------------------- batches
    def _to_features(self, inputs: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A batch of cached features (B, P, C) on the device (`_batches` gathered them) or uint8 images
        (B, 3, S, S) -> features (B, P, C) in the dtype the model computes in.

        rows (B,), when given, name each item's image: an image in the batch more than once is encoded once.
        Cached float16 features are cast once per batch, to the autocast dtype when autocast is on
        (where every product would cast them again) and to float32 otherwise.
        """
        if self.use_cache:
            return inputs.to(self.autocast_dtype or torch.float32)
        inputs = inputs.to(self.device, non_blocking=True)
        if rows is None:
            return self._encode_images(inputs)
        return encode_distinct(self._encode_images, inputs, rows)

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        images = resize_batch(images, self.config.data.image_size)  # (B, 3, H, W)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model.encoder(images)  # (B, P, C)

    def _batches(self, purpose: str, epoch: int = 0) -> DataLoader:
        """The run's one DataLoader for `purpose`: `train` (shuffled captions), `val_pairs` (captions in
        order) or `val`/`test` (images in order; val capped at eval.val_images).

        Each is built once, so its workers persist across epochs. `train` is reshuffled by `train.seed`
        and the epoch, so a resumed run draws the same batches.
        """
        if purpose not in self._loaders:
            self._loaders[purpose] = self._make_loader(purpose)
        if purpose == "train":
            self._shuffle.manual_seed(self.config.train.seed * 1000 + epoch)
        store = self.stores.get("val" if purpose == "val_pairs" else purpose)
        return self._loaders[purpose] if store is None else GatheredBatches(self._loaders[purpose], store)

    def _make_loader(self, purpose: str) -> DataLoader:
        cfg = self.config
        split_name = "val" if purpose == "val_pairs" else purpose
        split = self.dataset.split(split_name)
        # Memory-mapped cached features cost a copy in a worker as in this process: no workers then.
        workers = 0 if self.use_cache else cfg.data.num_workers
        common = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=self.device.type == "cuda",
                      generator=torch.Generator().manual_seed(cfg.train.seed))  # seeds workers only
        if purpose in ("train", "val_pairs"):
            pairs = CaptionPairs(split, self.inputs[split_name])
            if purpose == "val_pairs":
                return DataLoader(pairs, batch_size=cfg.train.batch_size, collate_fn=longest_first, **common)
            if self.model.encoder.trainable_parameters():  # captions grouped by image (trainers.batching)
                sampler = ImageGroupedBatches(pairs.caption_image.array, cfg.train.batch_size, self._shuffle)
            else:
                sampler = BatchSampler(RandomSampler(pairs, generator=self._shuffle), cfg.train.batch_size, False)
            return DataLoader(pairs, batch_sampler=sampler, collate_fn=longest_first, **common)
        images = SplitImages(split, self.inputs[split_name])
        limit = cfg.eval.val_images if purpose == "val" else None
        if limit is not None and limit < len(images):
            images = Subset(images, range(limit))
        return DataLoader(images, batch_size=cfg.train.batch_size, **common)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    # ---------------------------------------------------------------------------------- train
    def train_epoch(self, epoch: int) -> float:
        """One pass over the train split; the mean batch loss.

        The losses stay on the device: the divergence guard reads their running peak every batch on
        the CPU, every `ACCELERATOR_CHECK_EVERY` batches on an accelerator, where each read stalls it.
        """
        t = self.config.train
        self.model.train()
        rate = ss_rate_at(epoch, t.scheduled_sampling)
        compiled_rate = torch.tensor(rate, device=self.device) if t.scheduled_sampling.max_rate > 0 else None
        total = torch.zeros((), device=self.device)
        peak, count = torch.full((), -math.inf, device=self.device), 0
        check_every = 1 if self.device.type == "cpu" else ACCELERATOR_CHECK_EVERY
        batches = self._batches("train", epoch)
        if self.progress:
            n = len(batches) if not t.max_batches_per_epoch else min(len(batches), t.max_batches_per_epoch)
            batches = track(batches, description=f"epoch {epoch}/{t.epochs}", total=n, transient=True,
                            console=Console(stderr=True))
        for batch_index, (inputs, captions, lengths, rows) in enumerate(batches):
            if t.max_batches_per_epoch and batch_index >= t.max_batches_per_epoch:
                break
            captions = captions.to(self.device, non_blocking=True)  # lengths stay on the host
            with self._autocast():
                features = self._to_features(inputs, rows)
                if self.compiled is not None:
                    loss, ce = self.compiled.loss(features, captions, compiled_rate, ss_per=t.scheduled_sampling.per,
                                                  alpha_c=t.alpha_c)
                else:
                    loss, ce = caption_loss(self.model.decoder, features, captions, lengths, ss_rate=rate,
                                            ss_per=t.scheduled_sampling.per, alpha_c=t.alpha_c)
            peak = torch.maximum(peak, loss.detach())  # NaN stays NaN
            if self.start_loss is None or batch_index % check_every == 0:
                self._guard_divergence(peak.item(), epoch, batch_index)
                peak.fill_(-math.inf)
            self._optimizer_step(self.optimizer, loss)
            total, count = total + loss.detach(), count + 1
        self._guard_divergence(peak.item(), epoch, count - 1)
        return total.item() / max(count, 1)

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """Backward, gradients clipped by `train.grad_clip` (by value or by their global norm), the
        optimizer's step, through the gradient scaler (a no-op but under fp16 on a GPU)."""
        t = self.config.train
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.grad_clip is not None:
            self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if t.grad_clip_mode == "norm":
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            else:
                torch.nn.utils.clip_grad_value_(params, t.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    def _guard_divergence(self, loss: float, epoch: int, batch: int) -> None:
        """Stop on a non-finite loss, or one above divergence_factor x the first (-inf: none seen)."""
        if loss == -math.inf:
            return
        if not math.isfinite(loss):
            raise TrainingDiverged(f"diverged: loss is {loss} at epoch {epoch}, batch {batch}")
        if self.start_loss is None:
            self.start_loss = loss
        limit = self.config.train.divergence_factor * self.start_loss
        if loss > limit:
            raise TrainingDiverged(f"diverged: loss {loss:.3g} at epoch {epoch}, batch {batch} is above "
                                   f"{self.config.train.divergence_factor:g}x its start ({self.start_loss:.3g})")

    # ------------------------------------------------------------------------------- evaluate
    @torch.no_grad()
    def validation_loss(self) -> float:
        self.model.eval()
        total, count = torch.zeros((), device=self.device), 0
        for inputs, captions, lengths, rows in self._batches("val_pairs"):
            captions = captions.to(self.device, non_blocking=True)
            with self._autocast():
                features = self._to_features(inputs, rows)
                if self.compiled is not None:
                    _, ce = self.compiled.loss(features, captions, None, ss_per="token", alpha_c=0.0)
                else:
                    _, ce = caption_loss(self.model.decoder, features, captions, lengths, ss_rate=0.0, ss_per="token",
                                         alpha_c=0.0)
            total, count = total + ce.float() * captions.shape[0], count + captions.shape[0]
        return total.item() / max(count, 1)

    @torch.no_grad()
    def evaluate(self, split_name: str, variants: list[DecodeVariant]) -> dict[str, tuple[Captions, dict]]:
        """Decode `split_name` (val: its first eval.val_images) with `variants`: id -> (captions, scores)."""
        self.model.eval()
        with self._autocast():
            captions = caption_batches(self._batches(split_name), self._to_features, self.model.decoder,
                                       self.vocab, variants, seed=self.config.train.seed,
                                       rows=self.compiled.rows if self.compiled is not None else None)
        metrics = list(self.config.eval.metrics)
        split = self.dataset.split(split_name)
        return {vid: (caps, score_split(split, caps, metrics)) for vid, caps in captions.items()}

    def _selection_score(self, metrics: dict) -> float:
        """The epoch's `eval.select_by`, signed so that higher is better (LR on plateau maximises it)."""
        metric, mode = selection_metric(self.config.eval.select_by)
        return metrics[metric] if mode == "max" else -metrics[metric]

    # ---------------------------------------------------------------------------------- run
    def run(self) -> EpochResult:
        cfg = self.config
        result = None
        for epoch in range(self.start_epoch, cfg.train.epochs + 1):
            started = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            metrics = {"train_loss": train_loss, "val_loss": self.validation_loss(),
                       "lr": self.optimizer.param_groups[0]["lr"],
                       "ss_rate": ss_rate_at(epoch, cfg.train.scheduled_sampling)}
            # Only the reference decode steers training: selection, LR on plateau, early stopping.
            captions, scores = self.evaluate("val", [self.reference])[self.reference.id]
            metrics.update({f"val_{k}": v for k, v in scores.items()})
            score = self._selection_score(metrics)
            is_best = score > self.best_score
            if is_best:
                self.best_score, self.best_epoch, self.stale_epochs = score, epoch, 0
                self.best_state = trainable_state(self.model)
            else:
                self.stale_epochs += 1
            self._step_lr_schedule(score)
            stop_reason = self._stop_reason(epoch)
            metrics.update(epoch=epoch, epoch_time_s=time.perf_counter() - started, best_epoch=self.best_epoch)
            self.history.append(dict(metrics))
            result = EpochResult(epoch, metrics, {}, self.checkpoint_dir, is_best, bool(stop_reason),
                                 stop_reason, samples=self._samples(captions), deterministic=self.determinism.describe(),
                                 device=device_name(self.device), amp=amp_name(self.autocast_dtype))
            if result.final:  # the decode variants' evaluation: when it began (the epoch's clock) and took
                evaluating = time.time()
                self._finish(result)
                result.metrics.update(evaluation_began=evaluating, evaluation_s=time.time() - evaluating)
            saving = time.perf_counter()
            self._save(epoch, {f"predictions/{path.name}": path for path in result.predictions.values()})
            result.metrics["checkpoint_time_s"] = time.perf_counter() - saving  # the cost of a trial counts it
            self.on_epoch(result)
            if result.final:
                break
        if result is None:  # resumed after the last epoch: nothing left to train
            raise RuntimeError(f"nothing to train: the checkpoint is already at epoch {self.start_epoch - 1}")
        return result

    def _step_lr_schedule(self, score: float) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(score)
        elif self.scheduler is not None:
            self.scheduler.step()

    def _stop_reason(self, epoch: int) -> str:
        patience = self.config.train.early_stopping
        if patience is not None and self.stale_epochs >= patience:
            return f"early stopping: no better val_{self.config.eval.select_by} in {patience} epochs"
        if epoch >= self.config.train.epochs:
            return "completed all epochs"
        return ""

    def _samples(self, captions: Captions) -> list[dict]:
        split = self.dataset.split("val")
        n = min(self.config.eval.sample_captions, len(captions.texts))
        return [{"image_id": split.image_ids[i], "file": split.filenames[i], "caption": captions.texts[i],
                 "references": split.references[i][:2]} for i in range(n)]

    def _finish(self, result: EpochResult) -> None:
        """Decode val and test with the best weights, once for every variant (and the reference);
        the reference's test metrics are the training's own, next to the constant caption's
        (`test_constant_caption_*`) to compare them with."""
        current = trainable_state(self.model)
        load_trainable(self.model, self.best_state)
        decoded = self.variants + ([] if self.reference in self.variants else [self.reference])
        val = self.evaluate("val", decoded)
        test = self.evaluate("test", decoded)
        load_trainable(self.model, current)
        for variant in decoded:
            captions, scores = test[variant.id]
            metrics = {**{f"val_{k}": v for k, v in val[variant.id][1].items()},
                       **{f"test_{k}": v for k, v in scores.items()}}
            if variant in self.variants:
                result.variant_metrics[variant.id] = metrics
            if variant == self.reference:
                result.metrics.update({k: v for k, v in metrics.items() if k.startswith("test_")})
            result.predictions[variant.id] = write_predictions(
                self.run_dir / "predictions" / f"test_{variant.id}.json", self.dataset.split("test"), captions.texts)
        result.metrics["reference_variant"] = self.reference.id
        baseline = constant_caption_scores(self.dataset.split("test"), list(self.config.eval.metrics))
        result.metrics.update({f"test_constant_caption_{k}": v for k, v in baseline.items()})

    def _save(self, epoch: int, extra_files: Optional[dict[str, Path]] = None) -> None:
        """The checkpoint; the final one also carries the test predictions, so they reach storage.

        The last epoch's leaves out the optimizer's state (Adam's: twice the trainable weights):
        resuming starts from a checkpoint with epochs left to train, never from that one
        (trainers.checkpoint.resume_point)."""
        state = {"model": trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                 "epoch": epoch, "best_score": self.best_score,
                 "best_epoch": self.best_epoch, "stale_epochs": self.stale_epochs, "start_loss": self.start_loss,
                 "history": self.history, "rng": rng_state()}
        if epoch >= self.config.train.epochs:  # the last epoch's checkpoint is never resumed: no optimizer to keep
            del state["optimizer"], state["scheduler"]
        best = self.history[self.best_epoch - 1] if self.best_epoch else {}
        meta = {"config": self.config.model_dump(mode="json"), "vocab": list(self.vocab.itos), "epoch": epoch,
                "best_epoch": self.best_epoch, "best_metrics": best,
                "variants": {v.id: v.config.model_dump(mode="json") for v in self.variants},
                "frozen_encoder": self.frozen_encoder}
        store_random_encoder(self.run_dir, self.model, self.frozen_encoder)
        save_checkpoint(self.checkpoint_dir, state, self.best_state, meta, extra_files)

    @cached_property
    def frozen_encoder(self) -> Optional[dict]:
        """What identifies the frozen encoder blocks checkpoints leave out (trainers.checkpoint)."""
        return frozen_encoder_meta(self.model, self.config.model)


class GatheredBatches:
    """A DataLoader's batches with their first item, the inputs, replaced by the cached features of
    their rows (the last item) on the device, gathered where a `FeatureStore` holds them."""

    def __init__(self, loader: DataLoader, store: FeatureStore):
        self.loader, self.store = loader, store

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for inputs, *rest in self.loader:
            yield (self.store.batch(inputs, rest[-1]), *rest)
