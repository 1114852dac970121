"""`trainer: alignment`: train Karpathy & Fei-Fei 2015's alignment model, one configuration.

`AlignmentRecipe` is trainers.loop's CaptionRecipe with the alignment's own model, batches, loss and
evaluation. The epoch loop, checkpoints, resume, LR schedule, early stopping and divergence guard
are CaptionRecipe's, so `orch train` and `orch run` receive the same stream of EpochResults:

- every epoch: train_loss and val_loss (the mean term of eq. 9), val retrieval (val_i2t_R1 ...
  val_t2i_medr, val_rsum) and sample alignments of val sentences; the best epoch by
  eval.select_by is kept.
- the final epoch, from the best weights: test retrieval with the chance level of each recall; the
  region captioner trained on the train split's region-snippet pairs; the test sentences' snippets,
  regions and region captions (predictions/test_alignments.json); on synthetic data, the fraction
  of snippets aligned to their object's third and of region captions naming their object.

Every decode variant gets the same retrieval metrics (decoding plays no part in them), so the
variant runs of the MLflow layout hold them too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from torch.utils.data import DataLoader, Subset

from trainers.alignment.batches import caption_words, distinct_image_batches
from trainers.alignment.model import AlignmentModel
from trainers.alignment.mrf import Snippet, sentence_snippets
from trainers.alignment.objective import image_sentence_scores, ranking_loss
from trainers.alignment.region_captions import RegionSnippetPairs, caption_regions, region_features
from trainers.alignment.regions import build_regions, split_fragments
from trainers.alignment.retrieval import RECALLS, chance_recall, retrieval_metrics
from trainers.alignment.synthetic import alignment_scores
from trainers.data.loaders import CaptionPairs, LazyArray, SplitImages
from trainers.features import cached_features, resize_batch
from trainers.evaluation import DecodeVariant
from trainers.losses import caption_loss
from trainers.loop import CaptionRecipe, EpochResult

SPLITS = ("train", "val", "test")
IMAGE_CHUNK, SENTENCE_CHUNK = 16, 512  # score matrices are computed in blocks of this many
STATISTICS_IMAGES = 2000  # the train images whose CNN features set the model's standardisation


@dataclass
class EmbeddedSplit:
    """Every image and sentence of a split (or its first images) in the multimodal space."""

    images: torch.Tensor  # (N, M, h) image fragments v_i
    sentences: torch.Tensor  # (K, T, h) sentence fragments s_t
    counts: torch.Tensor  # (K,) words per sentence
    sentence_image: np.ndarray  # (K,) the image row each sentence describes


@dataclass
class AlignedSentence:
    row: int  # its image's row in the split
    words: list[int]  # word ids
    snippets: list[Snippet]
    fragments: torch.Tensor  # (M, 4 + C) its image's boxes and CNN features, on the CPU


class AlignmentRecipe(CaptionRecipe):
    """Holds the state of one run; `run()` (CaptionRecipe's) reads: setup, epochs, finish."""

    # ----------------------------------------------------------------------------------- setup
    def setup(self, resume_from: Optional[Path] = None) -> None:
        cfg = self.config
        self._begin()
        self.regions = build_regions(cfg).to(self.device).eval()
        self.use_cache = cfg.data.feature_cache
        self.inputs = self._fragment_arrays()
        self.model = AlignmentModel(cfg, self.regions.feature_dim, len(self.vocab)).to(self.device)
        self.model.set_feature_statistics(self._train_features())
        self._ready_to_train(resume_from)

    def _fragment_arrays(self) -> dict[str, Optional[LazyArray]]:
        """Per split: the cached fragments (N, M, 4 + C) float16, or None (fragments computed per batch)."""
        cfg = self.config
        if not self.use_cache:
            return dict.fromkeys(SPLITS)
        a = cfg.alignment
        name = f"alignment-{a.regions}-{cfg.model.encoder}"
        if a.regions == "detector":
            name += f"-{a.detector}-{a.num_regions}"
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.data.prepared) / "features"
        paths = cached_features(self.dataset, self.regions, encoder_name=name, image_size=cfg.data.image_size,
                                encoded_size=cfg.model.encoded_size, cache_dir=cache_dir, device=self.device)
        return {s: LazyArray(paths[s]) if s in paths else None for s in SPLITS}

    @torch.no_grad()
    def _train_features(self) -> torch.Tensor:
        """The CNN features of every fragment of the first STATISTICS_IMAGES train images: (n, C)."""
        split = self.dataset.split("train")
        images = Subset(SplitImages(split, self.inputs["train"]), range(min(STATISTICS_IMAGES, len(split))))
        return torch.cat([split_fragments(self._fragments(inputs))[1].flatten(0, 1)  # (b * M, C)
                          for inputs, _rows in self._in_order(images)])

    # -------------------------------------------------------------------------------- batches
    def _fragments(self, inputs: torch.Tensor) -> torch.Tensor:
        """A batch of cached fragments, or of uint8 images (B, 3, S, S) -> float fragments (B, M, 4 + C)."""
        inputs = inputs.to(self.device, non_blocking=True)
        if self.use_cache:
            return inputs.float()
        return self.regions(resize_batch(inputs, self.config.data.image_size))

    def _pairs_loader(self, split_name: str, seed: int) -> DataLoader:
        """Image-caption pairs in distinct-image batches, shuffled by `seed`."""
        pairs = CaptionPairs(self.dataset.split(split_name), self.inputs[split_name])
        batches = distinct_image_batches(pairs.caption_image.array, self.config.train.batch_size,
                                         torch.Generator().manual_seed(seed))
        return DataLoader(pairs, batch_sampler=batches, num_workers=self.config.data.num_workers,
                          pin_memory=self.device.type == "cuda")

    def _in_order(self, dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.config.train.batch_size, num_workers=self.config.data.num_workers)

    def _batch_loss(self, inputs: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        _, features = split_fragments(self._fragments(inputs))  # (B, M, C)
        words, counts = caption_words(captions.to(self.device), lengths.to(self.device))  # (B, T), (B,)
        images = self.model.embed_images(features)  # (B, M, h)
        sentences = self.model.embed_sentences(words, counts)  # (B, T, h)
        return ranking_loss(image_sentence_scores(images, sentences, counts), self.config.alignment.margin)

    # ---------------------------------------------------------------------------------- train
    def train_epoch(self, epoch: int) -> float:
        t = self.config.train
        self.model.train()
        batches = self._pairs_loader("train", t.seed * 1000 + epoch)
        limit = min(len(batches), t.max_batches_per_epoch or len(batches))
        if self.progress:
            batches = track(batches, description=f"epoch {epoch}/{t.epochs}", total=limit, transient=True,
                            console=Console(stderr=True))
        total, count = 0.0, 0
        for batch_index, (inputs, captions, lengths, _rows) in enumerate(batches):
            if batch_index >= limit:
                break
            with self._autocast():
                loss = self._batch_loss(inputs, captions, lengths)
            self._guard_divergence(loss.item(), epoch, batch_index)
            self._optimizer_step(self.optimizer, loss)
            total, count = total + loss.item(), count + 1
        return total / max(count, 1)

    # ------------------------------------------------------------------------------- evaluate
    @torch.no_grad()
    def validation_loss(self) -> float:
        """The mean term of eq. (9) on val, in the same batches every epoch."""
        self.model.eval()
        total, count = 0.0, 0
        for inputs, captions, lengths, _rows in self._pairs_loader("val", self.config.train.seed):
            with self._autocast():
                loss = self._batch_loss(inputs, captions, lengths)
            total, count = total + loss.item() * captions.shape[0], count + captions.shape[0]
        return total / max(count, 1)

    @torch.no_grad()
    def evaluate(self, split_name: str, variants: list[DecodeVariant]) -> dict[str, tuple[list[dict], dict]]:
        """Retrieval on `split_name` (val: its first eval.val_images) and sample alignments: one answer,
        whatever the decode variant (retrieval decodes nothing)."""
        embedded = self._embed(split_name, self.config.eval.val_images if split_name == "val" else None)
        scores = retrieval_metrics(self._score_matrix(embedded), embedded.sentence_image)
        samples = self._sample_alignments(split_name, self.config.eval.sample_captions)
        return {variant.id: (samples, scores) for variant in variants}

    def _samples(self, alignments: list[dict]) -> list[dict]:
        return alignments

    @torch.no_grad()
    def _embed(self, split_name: str, limit: Optional[int] = None) -> EmbeddedSplit:
        self.model.eval()
        split = self.dataset.split(split_name)
        n_images = len(split) if limit is None else min(limit, len(split))
        images = [self.model.embed_images(split_fragments(self._fragments(inputs))[1])  # (b, M, h)
                  for inputs, _rows in self._in_order(Subset(SplitImages(split, self.inputs[split_name]),
                                                             range(n_images)))]
        kept = np.flatnonzero(np.asarray(split.caption_image) < n_images)  # (K,)
        captions = torch.from_numpy(np.asarray(split.captions[kept], dtype=np.int64))  # (K, L)
        words, counts = caption_words(captions, torch.from_numpy(np.asarray(split.lengths[kept], dtype=np.int64)))
        step = self.config.train.batch_size
        sentences = [self.model.embed_sentences(words[i:i + step].to(self.device), counts[i:i + step].to(self.device))
                     for i in range(0, len(kept), step)]  # (b, T, h) each
        return EmbeddedSplit(torch.cat(images), torch.cat(sentences), counts.to(self.device),
                             np.asarray(split.caption_image[kept]))

    @staticmethod
    def _score_matrix(embedded: EmbeddedSplit) -> np.ndarray:
        """S_kl for every image and sentence of the split: (N, K), computed in blocks."""
        rows = []
        for i in range(0, embedded.images.shape[0], IMAGE_CHUNK):
            rows.append(torch.cat([
                image_sentence_scores(embedded.images[i:i + IMAGE_CHUNK], embedded.sentences[k:k + SENTENCE_CHUNK],
                                      embedded.counts[k:k + SENTENCE_CHUNK])
                for k in range(0, embedded.sentences.shape[0], SENTENCE_CHUNK)], dim=1))  # (n, K)
        return torch.cat(rows).float().cpu().numpy()

    @torch.no_grad()
    def _aligned_sentences(self, split_name: str) -> Iterator[AlignedSentence]:
        """Every sentence of a split, in order, aligned to its image's regions at `alignment.beta`."""
        self.model.eval()
        beta = self.config.alignment.beta
        for inputs, captions, lengths, rows in self._in_order(CaptionPairs(self.dataset.split(split_name),
                                                                             self.inputs[split_name])):
            fragments = self._fragments(inputs)  # (B, M, 4 + C)
            words, counts = caption_words(captions.to(self.device), lengths.to(self.device))  # (B, T), (B,)
            images = self.model.embed_images(split_fragments(fragments)[1])  # (B, M, h)
            sentences = self.model.embed_sentences(words, counts)  # (B, T, h)
            for i, n in enumerate(counts.tolist()):
                yield AlignedSentence(int(rows[i]), words[i, :n].tolist(),
                                      sentence_snippets(images[i], sentences[i, :n], beta), fragments[i].float().cpu())

    def _sample_alignments(self, split_name: str, n_images: int) -> list[dict]:
        """The first sentence of each of the split's first `n_images` images, aligned."""
        samples, seen = [], set()
        n_images = min(n_images, len(self.dataset.split(split_name)))
        for sentence in self._aligned_sentences(split_name):
            if len(seen) == n_images:
                break
            if sentence.row < n_images and sentence.row not in seen:
                seen.add(sentence.row)
                samples.append(self._described(split_name, sentence))
        return samples

    def _described(self, split_name: str, sentence: AlignedSentence, captions: Optional[list[str]] = None) -> dict:
        """A JSON-ready alignment: the sentence, and each snippet's words, region, box (and caption)."""
        split = self.dataset.split(split_name)
        words = [self.vocab.itos[w] for w in sentence.words]
        boxes, _ = split_fragments(sentence.fragments)  # (M, 4)
        snippets = [{"words": " ".join(words[s.start:s.end]), "region": s.region,
                     "box": [round(float(x), 4) for x in boxes[s.region]]} for s in sentence.snippets]
        for snippet, caption in zip(snippets, captions or []):
            snippet["caption"] = caption
        return {"image_id": split.image_ids[sentence.row], "file": split.filenames[sentence.row],
                "sentence": " ".join(words), "snippets": snippets}

    # ---------------------------------------------------------------------------------- finish
    def _finish(self, result: EpochResult) -> None:
        """Test retrieval from the best weights, then the region captioner; all join the final result."""
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.best_state)
        test = self._embed("test")
        scores = retrieval_metrics(self._score_matrix(test), test.sentence_image)
        scores.update(self._chance(test.sentence_image, test.images.shape[0]))
        if self.config.alignment.caption_epochs:
            result.metrics["train_region_caption_loss"] = self._train_region_captioner()
        aligned, captions = self._test_alignments()
        scores.update(self._synthetic_scores(aligned, captions))
        path = self.run_dir / "predictions" / "test_alignments.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([self._described("test", sentence, sentence_captions) for sentence, sentence_captions
                                    in zip(aligned, captions or [None] * len(aligned))], indent=1))
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        captioner = {k: v for k, v in self.best_state.items() if k.startswith("region_captioner.")}
        self.model.load_state_dict({**current, **captioner})
        test_metrics = {f"test_{k}": v for k, v in scores.items()}
        best_val = {k: v for k, v in self.history[self.best_epoch - 1].items() if k.startswith("val_")}
        for variant in self.variants:
            result.variant_metrics[variant.id] = {**best_val, **test_metrics}
            result.predictions[variant.id] = path
        result.metrics.update(test_metrics)
        result.metrics["reference_variant"] = self.reference.id

    @staticmethod
    def _chance(sentence_image: np.ndarray, n_images: int) -> dict[str, float]:
        """The recalls a random ranking reaches on this split: chance_i2t_R1 ... chance_t2i_R10."""
        own = np.bincount(sentence_image, minlength=n_images)  # (N,) sentences per image
        chance = {}
        for k in RECALLS:
            chance[f"chance_i2t_R{k}"] = float(np.mean([chance_recall(k, len(sentence_image), n) for n in own]))
            chance[f"chance_t2i_R{k}"] = chance_recall(k, n_images)
        return chance

    def _train_region_captioner(self) -> float:
        """Train `model.region_captioner` on the train split's region-snippet pairs; its last epoch's loss."""
        cfg = self.config
        train = self.dataset.split("train")
        source = self.inputs["train"] if self.use_cache else LazyArray(train.images_path)
        pairs = RegionSnippetPairs.from_alignments(
            source, ((s.row, s.words, s.snippets) for s in self._aligned_sentences("train")), self.vocab)
        decoder = self.model.region_captioner
        optimizer = torch.optim.RMSprop(decoder.parameters(), lr=cfg.alignment.caption_lr)
        decoder.train()
        mean_loss = math.nan
        for epoch in range(cfg.alignment.caption_epochs):
            generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch)
            total, count = 0.0, 0
            for inputs, regions, captions, lengths in DataLoader(pairs, batch_size=cfg.train.batch_size, shuffle=True,
                                                                 generator=generator,
                                                                 num_workers=cfg.data.num_workers):
                features = self.model.standardised(region_features(self._fragments(inputs),
                                                                   regions.to(self.device)))  # (B, 1, C)
                with self._autocast():
                    loss, _ = caption_loss(decoder, features, captions.to(self.device), lengths.to(self.device),
                                           ss_rate=0.0, ss_per="token", alpha_c=0.0)
                self._optimizer_step(optimizer, loss)
                total, count = total + loss.item(), count + 1
            mean_loss = total / max(count, 1)
        decoder.eval()
        return mean_loss

    @torch.no_grad()
    def _test_alignments(self) -> tuple[list[AlignedSentence], Optional[list[list[str]]]]:
        """The test sentences aligned and, with a trained region captioner, a caption per snippet's region."""
        aligned = list(self._aligned_sentences("test"))
        if not self.config.alignment.caption_epochs:
            return aligned, None
        captions = []
        for sentence in aligned:
            regions = torch.tensor([s.region for s in sentence.snippets], dtype=torch.long)
            features = split_fragments(sentence.fragments)[1][regions].to(self.device)  # (R, C)
            captions.append(caption_regions(self.model.region_captioner, self.model.standardised(features),
                                            self.config.decode, self.vocab))
        return aligned, captions

    def _synthetic_scores(self, aligned: list[AlignedSentence], captions: Optional[list[list[str]]]) -> dict:
        """On `orch synth` data (ground truth present): how well snippets and region captions find their objects."""
        truths = self.dataset.split("test").ground_truth
        if not aligned or any(truths[s.row] is None for s in aligned):
            return {}
        sentences = [([self.vocab.itos[w] for w in s.words], s.snippets,
                      split_fragments(s.fragments)[0].tolist(), truths[s.row]["objects"]) for s in aligned]
        return alignment_scores(sentences, captions)
