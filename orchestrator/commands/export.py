"""`orch export NAME`: the best trials of an experiment as self-contained model folders.

Trials are ranked by the validation score of their best decode variant at their best epoch (the
epoch whose weights the checkpoint holds); the test split never chooses. Each of the top K
becomes one folder that `orch caption` and `orch evaluate` load without MLflow or the results:

    model.safetensors   the whole model's state dict (encoder included)
    config.yaml         the trainer config, its `decode` section the chosen variant's settings
    vocab.json          {"itos": [...]}
    metrics.json        where it came from, how it was chosen, its val and test scores
    README.md           the model card

A `trainer: alignment` experiment is exported with a retrieval metric (`--metric rsum`, `t2i_R5`, ...):
its folders (trainers.alignment.aligner's export, plus metrics.json and README.md) are what
`orch align --model` reads.

`--register` registers each trial's logged model (its best checkpoint as an MLflow pyfunc model,
orchestrator.pyfunc, which the training logged) in the MLflow Model Registry under the
experiment's name, one version per export: no run is made and no weights are copied; the version
names the trial run and the logged model, and the logged model lists the version.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from orchestrator.credentials import masked
from orchestrator.tracking.reader import Pick, Results, open_results, pick_best, quiet_downloads
from orchestrator.tracking.names import BEST_CHECKPOINT, CAPTIONER_MODEL, mlflow_metric
from trainers.config import RETRIEVAL_SELECTABLE
from trainers.errors import InputError, reading
from trainers.inference import EXPORT_CONFIG, EXPORT_VOCAB, EXPORT_WEIGHTS
from trainers.metrics import SCORE_SCALE
from trainers.staging import staged_folder

EXPORTABLE = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
CARD_METRICS = (("Bleu_1", "BLEU-1"), ("Bleu_4", "BLEU-4"), ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"),
                ("CIDEr", "CIDEr"), ("mean_caption_length", "length"))
CHAMPION = "champion"  # the registry alias of the rank-1 export: models:/NAME@champion


@dataclass
class Exported:
    folder: Path
    pick: Pick
    registered_version: Optional[str] = None


def export_best(name: str, uri: str, out: Path, metric: str = "CIDEr", top_k: int = 1, register: bool = False,
                invocation: Optional[str] = None) -> list[Exported]:
    """Export the `top_k` best finished trials of `name`'s latest (or named) invocation into `out`."""
    if metric not in EXPORTABLE + RETRIEVAL_SELECTABLE:
        raise InputError(f"--metric {metric!r}: choose one of {', '.join(EXPORTABLE)} (captioners) or "
                         f"{', '.join(RETRIEVAL_SELECTABLE)} (trainer: alignment)")
    if top_k < 1:
        raise InputError(f"--top-k {top_k}: export at least 1 trial")
    trainer = "alignment" if metric in RETRIEVAL_SELECTABLE else "captioner"
    if register and trainer == "alignment":
        raise InputError("--register: the Model Registry holds captioners; an alignment model is exported as a "
                         "folder for `orch align` (leave out --register)")
    results = open_results(name, uri, invocation)
    picks = [pick for pick in pick_best(results, metric)
             if pick.variant.params.get("trainer", "captioner") == trainer][:top_k]
    if not picks:
        trainers = {row.params.get("trainer", "captioner") for row in results.finished()} - {trainer}
        if trainers:
            rank_by = "a retrieval metric, e.g. --metric rsum" if "alignment" in trainers else "--metric CIDEr"
            raise InputError(f"experiment {name!r} trains {', '.join(sorted(trainers))} models: rank them by "
                             f"{rank_by} (--metric {metric} ranks {trainer} models)")
        statuses = ", ".join(f"{run.info.run_name}: {run.info.status}" for run in results.trials.values()) or "no trials"
        raise InputError(f"experiment {name!r} ({results.invocation}) has no finished trial to export ({statuses}): "
                         f"see `orch status {name}`")
    exported = []
    write = write_alignment_export if trainer == "alignment" else write_export
    for rank, pick in enumerate(picks, start=1):
        folder = write(results, pick, Path(out) / f"top{rank}-{pick.variant.id}", rank, metric)
        version = register_export(results, pick, folder, rank, metric) if register else None
        exported.append(Exported(folder, pick, version))
    if register:  # the winner, whatever order the versions were made in
        results.tracker.client.set_registered_model_alias(name, CHAMPION, exported[0].registered_version)
    return exported


def trial_model(results: Results, pick: Pick):
    """The trial's logged model (its best checkpoint as a captioner), or None (an alignment trial)."""
    client = results.tracker.client
    outputs = pick.trial_run.outputs  # the run as the search returned it: its logged models are there
    models = [client.get_logged_model(output.model_id) for output in (outputs.model_outputs if outputs else [])]
    # Named after the training with model_type captioner; runs logged before that named it `captioner`.
    captioners = [model for model in models if CAPTIONER_MODEL in (model.model_type, model.name)]
    return captioners[-1] if captioners else None


def download_best_checkpoint(results: Results, pick: Pick, into: Path) -> Path:
    """The trial's best checkpoint folder, downloaded into `into`: from the trial's logged model (a
    captioner's only copy in MLflow), else from its `best_checkpoint/` artifacts (an alignment trial)."""
    import mlflow

    from orchestrator.pyfunc import ARTIFACT  # the checkpoint's folder inside the model

    model = trial_model(results, pick)
    with quiet_downloads():
        if model is not None:
            def download(path: str) -> Path:
                return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{model.artifact_location}/{path}",
                                                                dst_path=str(into), tracking_uri=results.uri))

            mlmodel = download("MLmodel")  # where the pyfunc flavour put the checkpoint's folder
            files = yaml.safe_load(mlmodel.read_text())["flavors"]["python_function"]["artifacts"][ARTIFACT]["path"]
            mlmodel.unlink()
            return download(files)
        return Path(results.tracker.client.download_artifacts(pick.trial_run.info.run_id, BEST_CHECKPOINT, str(into)))


def write_export(results: Results, pick: Pick, folder: Path, rank: int, metric: str) -> Path:
    """Write one export folder atomically (a staging folder renamed into place; an older one is replaced)."""
    import torch
    from safetensors.torch import save_file

    from trainers.checkpoint import complete_state

    folder.parent.mkdir(parents=True, exist_ok=True)
    with (tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as download,
          staged_folder(folder, replace=True) as staging):
        checkpoint = download_best_checkpoint(results, pick, Path(download))
        remedy = f"MLflow's best checkpoint of {pick.variant.training} is damaged: export another trial (--top-k)"
        with reading(checkpoint / "meta.json", remedy):
            meta = json.loads((checkpoint / "meta.json").read_text())
        with reading(checkpoint / "best_model.pt", remedy):
            state = torch.load(checkpoint / "best_model.pt", map_location="cpu", weights_only=True)
        state = complete_state(state, meta, checkpoint)  # the frozen encoder rebuilt: an export holds the whole model
        save_file({key: tensor.contiguous() for key, tensor in state.items()}, staging / EXPORT_WEIGHTS,
                  metadata={"format": "orch-captioner", "experiment": results.experiment, "trial": pick.trial})
        (staging / EXPORT_WEIGHTS).chmod(0o644)
        config = {**meta["config"], "decode": meta["variants"][pick.variant.variant]}
        (staging / EXPORT_CONFIG).write_text(f"# orch captioner: {results.experiment}, {pick.variant.id}\n"
                                             + yaml.safe_dump(config, sort_keys=False))
        (staging / EXPORT_VOCAB).write_text(json.dumps({"itos": meta["vocab"]}))
        metrics = _metrics(results, pick, rank, metric)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (staging / "README.md").write_text(model_card(results, pick, config, metrics, folder))
    return folder


def write_alignment_export(results: Results, pick: Pick, folder: Path, rank: int, metric: str) -> Path:
    """A `trainer: alignment` trial as the folder `orch align --model` reads (trainers.alignment.aligner's
    export: the frozen CNN's weights inside, nothing downloaded), with metrics.json and a model card."""
    from trainers.alignment.aligner import export_aligner_files

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as download:
        checkpoint = download_best_checkpoint(results, pick, Path(download))
        with staged_folder(folder, replace=True) as staging:
            export_aligner_files(checkpoint, staging, origin=f"{results.experiment}, {pick.variant.training}")
            metrics = _metrics(results, pick, rank, metric)
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=1))
            config = yaml.safe_load((staging / EXPORT_CONFIG).read_text())
            (staging / "README.md").write_text(alignment_card(results, pick, config, metrics, folder))
    return folder


def alignment_card(results: Results, pick: Pick, config: dict, metrics: dict, folder: Path) -> str:
    """README.md of an alignment export: what it is, its retrieval scores, how to align with it."""
    model, alignment = config["model"], config["alignment"]
    regions = (f"the whole image and the cells of the {model['encoded_size']}x{model['encoded_size']} grid"
               if alignment["regions"] == "grid" else
               f"the whole image and the top {alignment['num_regions']} boxes of {alignment['detector']}")
    keys = [f"{d}_{m}" for d in ("i2t", "t2i") for m in ("R1", "R5", "R10", "medr")]
    rows = "\n".join(f"| {split} | " + " | ".join(
        "–" if metrics[split].get(k) is None else f"{metrics[split][k]:.1f}" for k in keys) + " |"
        for split in ("val", "test"))
    return f"""# Alignment model: {results.experiment}, {pick.variant.training}

Karpathy & Fei-Fei 2015's visual-semantic alignment model (`trainer: alignment`, docs/alignment.md).

- Image fragments: {regions}; CNN {model['encoder']} (frozen), embedded in h = {alignment['embed_dim']}.
- Sentence fragments: the bidirectional ReLU RNN, word vectors of {alignment['word_dim']}.
- MRF β (default of `orch align`): {alignment['beta']}.
- Region captioner: {f"{model['decoder']} trained {alignment['caption_epochs']} epochs on the aligned "
                     "region-snippet pairs" if alignment['caption_epochs'] else "none"}.

Rank {metrics['rank']} of the finished trials of experiment `{results.experiment}` (invocation
`{results.invocation}`) by {metrics['selected_by']} at its best epoch ({pick.best_epoch}).
MLflow: trial run `{metrics['trial_run_id']}` in `{masked(results.uri)}`.

## Retrieval (recalls in percent, median rank 1-based)

| split | {" | ".join(keys)} |
|---|{"---|" * len(keys)}
{rows}

All metrics, with the chance levels of the test recalls: `metrics.json`.

## Align with it

```bash
orch align --model {folder} photo.jpg "a sentence about the photo" --plot figure.png
orch align --model {folder} photo.jpg --caption-regions
```

`model.safetensors` holds the alignment model, the region captioner and the frozen CNN
(under `regions.`): nothing is downloaded to use it.
"""


def _metrics(results: Results, pick: Pick, rank: int, metric: str) -> dict:
    client = results.tracker.client
    variant = pick.variant
    val = {}
    for key in variant.metrics:
        if key.startswith("val_"):
            history = {m.step: m.value for m in client.get_metric_history(results.variant_run_id(variant),
                                                                       mlflow_metric(key))}
            val[key[len("val_"):]] = history.get(pick.best_epoch, variant.metrics[key])
    return {
        "experiment": results.experiment, "invocation": results.invocation, "tracking_uri": masked(results.uri),
        "id": variant.id, "trial": pick.trial, "cell": variant.params.get("orch.cell", ""), "variant": variant.variant,
        "trial_run_id": pick.trial_run.info.run_id, "variant_run_id": results.variant_run_id(variant),
        "rank": rank, "selected_by": f"val_{metric}", "selection_score": pick.score, "best_epoch": pick.best_epoch,
        "varying": variant.varying,
        "val": val,
        "test": {k[len("test_"):]: v for k, v in variant.metrics.items() if k.startswith("test_")},
    }


def model_card(results: Results, pick: Pick, config: dict, metrics: dict, folder: Path) -> str:
    """README.md of an export: what it is, the data, the config, the scores and how to caption with it."""
    model, data, decode = config["model"], config["data"], config["decode"]
    weights = {"imagenet": "ImageNet weights", "none": "randomly initialised"}.get(model["weights"], model["weights"])
    tuned = {False: "frozen", True: "fine-tuned"}.get(model["fine_tune"], f"last {model['fine_tune']} blocks fine-tuned")
    varying = "".join(f"| `{key}` | {value} |\n" for key, value in metrics["varying"].items())
    header = "| split | " + " | ".join(label for _, label in CARD_METRICS) + " |\n|" + "---|" * (len(CARD_METRICS) + 1)
    rows = "\n".join(f"| {split} | "
                     + " | ".join(_shown(metrics[split].get(key), key) for key, _ in CARD_METRICS) + " |"
                     for split in ("val", "test"))
    return f"""# Captioner: {results.experiment}, {pick.variant.id}

- Encoder: {model['encoder']} ({weights}, {tuned}), pooled to a {model['encoded_size']}x{model['encoded_size']} grid.
- Decoder: {model['decoder']} core, {model['attention']} attention, embedding {model['embed_dim']}, hidden
  {model['hidden_dim']}, attention {model['attention_dim']}, dropout {model['dropout']}.

Rank {metrics['rank']} of the finished trials of experiment `{results.experiment}` (invocation
`{results.invocation}`) by {metrics['selected_by']} at its best epoch ({pick.best_epoch}).
MLflow: trial run `{metrics['trial_run_id']}`, variant run `{metrics['variant_run_id']}` in `{masked(results.uri)}`.

## Data

Trained on the prepared dataset `{data['prepared']}`; images at {data['image_size']} px.
Scores below are on its val split (at the best epoch) and test split.

## Configuration

What this trial's cell of the grid set:

| key | value |
|---|---|
{varying or '| (no grid) | |'}

Decoding: {decode['strategy']}, beam {decode['beam_size']}, length penalty β {decode['length_penalty']},
at most {decode['max_len']} tokens. The whole config: `config.yaml`.

## Metrics

{header}
{rows}

{SCORE_SCALE}; length in words. All metrics: `metrics.json`.

## Caption with it

```bash
orch caption photo.jpg --model {folder}
orch caption photo.jpg --model {folder} --beam-size 5 --length-penalty 1.0 --attention-plot attention.png
orch evaluate --model {folder} --prepared {data['prepared']} --split test --json
```

```python
from trainers.inference import load_model, caption_images
model = load_model("{folder}")
print(caption_images(model, ["photo.jpg"])[0].caption)
```

## Files

`model.safetensors` (the state dict, encoder included: nothing is downloaded to use it),
`config.yaml`, `vocab.json`, `metrics.json`. Images are read as RGB and resized to
{data['image_size']}x{data['image_size']}, as in training.
"""


def _shown(value: Optional[float], key: str) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if key == "mean_caption_length" else f"{value:.3f}"


def register_export(results: Results, pick: Pick, folder: Path, rank: int = 1, metric: str = "CIDEr") -> str:
    """Register the trial's logged model as a version of the registered model named after the experiment,
    tagged with where it came from and how it ranked; returns the new version. The version names the trial
    run and the logged model (its source is `models:/<model id>`, as `mlflow.register_model` makes it:
    nothing is copied), and the logged model lists it (MLflow's `mlflow.modelVersions` tag, which a
    tracking server sets itself)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    client, name = results.tracker.client, results.experiment
    model = trial_model(results, pick)
    if model is None:
        raise InputError(f"{pick.variant.training}: its run has no logged model to register (a run of an orch "
                         f"older than MLflow models, or not a captioner): export it without --register")
    decode = yaml.safe_load((folder / EXPORT_CONFIG).read_text())["decode"]
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"Captioners exported by `orch export {name}`")
    beta = decode["length_penalty"]
    tags = {"cell": pick.variant.params.get("orch.cell", ""), "trial": pick.trial, "variant": pick.variant.variant,
            "beta": beta, "metric": mlflow_metric(f"val_{metric}"), "value": f"{pick.score:.4f}", "rank": rank}
    # MLflow's registry store resolves a `models:/<id>` source through its default client: this store's.
    with _use_tracking_uri(results.uri):
        version = client.create_model_version(
            name, f"models:/{model.model_id}", run_id=model.source_run_id, model_id=model.model_id, tags=tags,
            description=f"Training {pick.variant.training}, ranked {rank} by val {metric} with decode variant "
                        f"{pick.variant.variant} (β {beta}): predict with params={{'length_penalty': {beta}}} to "
                        f"decode as it did; without params the model decodes as its training did.")
    listed = json.loads(client.get_logged_model(model.model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    if not any((item["name"], str(item["version"])) == (name, str(version.version)) for item in listed):
        client.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
            [*listed, {"name": name, "version": version.version}])})
    return str(version.version)
