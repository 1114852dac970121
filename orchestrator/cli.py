"""The `orch` command line: each command's options, and a thin shell over one module that does it
(orchestrator.commands.<command>, or the trainers' module for the data and model commands).

Exit codes: 0 done; 2 bad input (nothing started, nothing written); 1 anything else.
Heavy imports (torch, ray, mlflow) happen inside the commands so `orch --help` stays instant.
"""

from __future__ import annotations

import errno
import functools
import json
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from orchestrator import terminal
from orchestrator.locations import DEFAULT_STORAGE
from trainers.errors import DiskFull, InputError, TrainingDiverged

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, rich_markup_mode=None)
console = terminal.console(stderr=True)

# The usage example at the foot of each command's --help.
EXAMPLES = {name: f"Example: `{example}`" for name, example in {
    "synth": "orch synth data/synth --n 2000",
    "prepare": "orch prepare data/synth/dataset.json --images data/synth --out data/synth/prepared",
    "score": "orch score --references refs.json --predictions preds.json --json",
    "config": "orch config search_spaces/quickstart.yaml train.epochs=1",
    "train": "orch train one.yaml train.lr=1e-3 --json",
    "run": "orch run search_spaces/quickstart.yaml model.decoder=gru train.lr=1e-3 --dry-run",
    "resume": "orch resume quickstart",
    "status": "orch status quickstart",
    "ui": "orch ui --port 5000",
    "report": "orch report quickstart --out reports/quickstart",
    "export": "orch export quickstart --top-k 2 --register",
    "evaluate": "orch evaluate --model exports/quickstart/top1-c002-d01 --prepared data/synth/prepared --json",
    "caption": "orch caption a.jpg b.jpg --model exports/quickstart/top1-c002-d01 --attention-plot plots/",
    "align": "orch align photo.jpg \"a dog runs\" --model exports/align/top1-c001-d01 --plot figure.png",
    "env": "orch env search_spaces/coursework.yaml --address auto",
}.items()}


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        print(f"orch {version('orch')}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
):
    """orch: captioning ablations on Ray Tune, tracked in MLflow.

    Every command's --help ends with an example. Shell completion: `orch --install-completion`."""


FREE_SPACE = "free some space there and run the command again; a stopped `orch run` continues with `orch resume`"
UNWRITABLE = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "a read-only file system"}


def _exits_cleanly(command):
    """The one place expected failures become `error: <file or key>: <what> (<what to do>)`, exit 2.

    Loaders raise InputError naming the file or key (trainers.errors.reading turns a bad file into
    one); a folder orch may not write is bad input too, named here. Typer handles its own exits;
    anything else is a bug or a fault: exit 1 with its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as error:
            console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)  # [lstm, gru] is no markup
            raise typer.Exit(2)
        except DiskFull as error:
            console.print(f"[bold red]error:[/] {escape(str(error))} ({FREE_SPACE})", highlight=False)
            raise typer.Exit(2)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                # A write() names no file: the command's output folder is where it was writing.
                where = error.filename or kwargs.get("out") or "a file under the command's output folder"
                console.print(f"[bold red]error:[/] {escape(str(DiskFull(str(where))))} ({FREE_SPACE})",
                              highlight=False)
                raise typer.Exit(2)
            if error.errno not in UNWRITABLE or not error.filename:
                raise
            console.print(f"[bold red]error:[/] {escape(str(error.filename))}: {UNWRITABLE[error.errno]} (choose a "
                          f"folder this user can write, or fix its permissions)", highlight=False)
            raise typer.Exit(2)
        except TrainingDiverged as error:
            console.print(f"[bold red]failed:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(1)

    return wrapper


OVERRIDES_HELP = ("Overrides as KEY=VALUE, e.g. train.lr=1e-3 (the same as --set KEY=VALUE; applied after the "
                  "--set ones).")
SET_HELP = "Override a key: --set train.lr=1e-3 (repeatable)."


def _load_experiment(config: Path, set_: Optional[List[str]], overrides: Optional[List[str]], smoke: bool,
                     trials: bool = True):
    """The experiment file with its overrides (--set ones, then the positional ones), in its smoke profile
    when asked. `trials=False`: for `orch train`, which reserves nothing (orchestrator.experiment.loader)."""
    from orchestrator.experiment.loader import load_config
    from orchestrator.experiment.smoke import load_smoke_config

    return (load_smoke_config if smoke else load_config)(config, [*(set_ or []), *(overrides or [])], trials=trials)


def _reading(config: Optional[Path], storage: str):
    """A read command's settings: the store of --config's YAML, else of --storage (orchestrator.settings)."""
    from orchestrator.experiment.loader import load_config
    from orchestrator.settings import RunSettings

    return RunSettings.for_reading(load_config(config) if config is not None else None, storage)


STORAGE_HELP = "The ray.storage folder whose mlflow.db is the store (a bucket holds none: use --config)."


@app.command(epilog=EXAMPLES["synth"])
@_exits_cleanly
def synth(
    out: Path = typer.Argument(..., help="Folder to write the Karpathy-format JSON and images into."),
    n: int = typer.Option(2000, "--n", help="Number of images."),
    size: int = typer.Option(64, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same dataset."),
):
    """Write a synthetic captioning dataset in the Karpathy split JSON format."""
    from trainers.data.synthetic import write_synthetic_dataset

    summary = write_synthetic_dataset(out, n=n, size=size, seed=seed)
    console.print(summary.describe(), highlight=False)


@app.command(epilog=EXAMPLES["prepare"])
@_exits_cleanly
def prepare(
    karpathy_json: Path = typer.Argument(..., help="dataset_flickr8k.json / dataset_coco.json / orch synth's dataset.json"),
    images: Path = typer.Option(..., "--images", help="Folder holding the images (COCO: the folder above val2014/)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the prepared dataset into (appears atomically)."),
    min_word_freq: int = typer.Option(5, "--min-word-freq", help="Train-split words rarer than this become <unk>."),
    max_len: int = typer.Option(50, "--max-len", help="Captions longer than this many words are truncated."),
    image_size: int = typer.Option(256, "--image-size", help="Images are resized to this square side."),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="Skip and list unreadable images instead of failing."),
    allow_shared_images: bool = typer.Option(False, "--allow-shared-images", help="Accept one image file listed in "
                                             "two splits (refused by default: it leaks test images into training)."),
):
    """Turn a Karpathy split JSON and its images into a prepared dataset for training."""
    from trainers.data.prepare import prepare_dataset

    manifest = prepare_dataset(karpathy_json, images, out, min_word_freq=min_word_freq, max_len=max_len,
                               image_size=image_size, skip_bad_images=skip_bad_images,
                               allow_shared_images=allow_shared_images)
    console.print(manifest.describe(), highlight=False)


@app.command(epilog=EXAMPLES["score"])
@_exits_cleanly
def score(
    references: Path = typer.Option(..., "--references", help="Reference captions, COCO caption format."),
    predictions: Path = typer.Option(..., "--predictions", help="Predicted captions, COCO results format."),
    metrics: Optional[List[str]] = typer.Option(None, "--metric", help="Bleu, METEOR, ROUGE_L, CIDEr (repeatable; default all)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Score predicted captions with pycocoevalcap's standard pipeline."""
    from trainers.metrics import SCORE_SCALE, score_files, format_scores

    scores = score_files(references, predictions, metrics=metrics)
    if as_json:
        print(json.dumps(scores))
    else:
        print(format_scores(scores, metrics or None))
        console.print(SCORE_SCALE, highlight=False)


@app.command("config", epilog=EXAMPLES["config"])
@_exits_cleanly
def show_config(
    config: Path = typer.Argument(..., help="Experiment YAML."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, metavar="KEY=VALUE"),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help=SET_HELP),
    smoke: bool = typer.Option(False, "--smoke", help="Its smoke profile (orchestrator/experiment/smoke.py)."),
):
    """Print the resolved config as YAML: bases merged, overrides applied, every default filled in
    (what `orch run` would run, and what it saves as orch.yaml; Hydra's --cfg job)."""
    from orchestrator.experiment.loader import dump_resolved

    print(dump_resolved(_load_experiment(config, set_, overrides, smoke)), end="")


@app.command(epilog=EXAMPLES["train"])
@_exits_cleanly
def train(
    config: Path = typer.Argument(..., help="Experiment YAML (one configuration: no ablation grid)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, metavar="KEY=VALUE"),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="End the output with one JSON object of test metrics."),
    smoke: bool = typer.Option(False, "--smoke", help="Shrink it to run on synthetic data on the CPU (orchestrator/experiment/smoke.py)."),
):
    """Train one configuration in this process (no Ray), tracked in MLflow."""
    from orchestrator.commands.train import train_one
    from orchestrator.settings import RunSettings

    experiment = _load_experiment(config, set_, overrides, smoke, trials=False)
    summary = train_one(RunSettings.resolve(experiment, command="train"), console)
    if as_json:
        print(json.dumps(summary))


@app.command(epilog=EXAMPLES["run"])
@_exits_cleanly
def run(
    config: Path = typer.Argument(..., help="Experiment YAML: its ablation grid and search become Ray Tune trials."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, metavar="KEY=VALUE"),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help=SET_HELP),
    address: Optional[str] = typer.Option(None, "--address", help="Join this Ray cluster (overrides ray.address)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit: nothing is started."),
    smoke: bool = typer.Option(False, "--smoke", help="The same grid on synthetic data, tiny models, CPU (orchestrator/experiment/smoke.py)."),
):
    """Run an ablation as Ray Tune trials, every trial and decode variant tracked in MLflow."""
    from orchestrator.commands.run import run as run_experiment

    raise typer.Exit(run_experiment(_load_experiment(config, set_, overrides, smoke), console, address=address,
                                    dry_run=dry_run))


@app.command("env", epilog=EXAMPLES["env"])
@_exits_cleanly
def show_env(
    config: Optional[Path] = typer.Argument(None, help="Experiment YAML: also check what its trials need."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, metavar="KEY=VALUE"),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help=SET_HELP),
    address: Optional[str] = typer.Option(None, "--address", help="The Ray cluster to ask (overrides ray.address)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """The environment a run would get: Python, torch and its CUDA build, cuDNN, the NVIDIA driver, the GPUs
    torch can use, bf16, Ray, and (given a config or --address) the Ray cluster's CPUs and GPUs, the tracking
    store and the storage. Exit 2, with the failing line, when a config's needs are not met."""
    from orchestrator.commands.env import environment

    experiment = _load_experiment(config, set_, overrides, smoke=False) if config is not None else None
    report = environment(experiment, address)
    print(json.dumps(report.as_json(), indent=1) if as_json else report.render())
    for problem in report.problems:
        console.print(f"[bold red]error:[/] {escape(problem)}", highlight=False)
    if report.problems:
        raise typer.Exit(2)


@app.command(epilog=EXAMPLES["resume"])
@_exits_cleanly
def resume(
    name_or_dir: str = typer.Argument(..., help="An experiment name (its latest run), or a run folder or URI "
                                                "(s3://bucket/prefix/NAME/run-...)."),
    storage: str = typer.Option(DEFAULT_STORAGE, "--storage", help="The ray.storage the name lives in: a folder, "
                                                                    "or s3://bucket/prefix[?endpoint_override=...]."),
):
    """Continue an interrupted `orch run`: finished trials stay, unfinished ones resume from checkpoints."""
    from orchestrator.commands.resume import resume as resume_invocation

    raise typer.Exit(resume_invocation(name_or_dir, storage, console))


@app.command(epilog=EXAMPLES["status"])
@_exits_cleanly
def status(
    name: Optional[str] = typer.Argument(None, help="Experiment name (default: every experiment in the store)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Read tracking.uri from this YAML."),
    storage: str = typer.Option(DEFAULT_STORAGE, "--storage", help=STORAGE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """The trials and decode variants of an experiment's latest run, with metrics and statuses."""
    from orchestrator.commands.status import show_status

    show_status(name, _reading(config, storage), as_json, console)


@app.command(epilog=EXAMPLES["ui"])
@_exits_cleanly
def ui(
    config: Optional[Path] = typer.Option(None, "--config", help="Read tracking.uri from this YAML."),
    storage: str = typer.Option(DEFAULT_STORAGE, "--storage", help=STORAGE_HELP),
    port: int = typer.Option(5000, "--port", help="The port the UI listens on."),
    host: str = typer.Option("127.0.0.1", "--host"),
    workers: int = typer.Option(1, "--workers", min=1, help="The UI server's worker processes (one serves a laptop)."),
):
    """The MLflow UI on the configured tracking store: one server worker and no GenAI job runners by default."""
    import os
    import subprocess

    from orchestrator.credentials import masked
    from orchestrator.tracking.reader import stored_views

    uri = _reading(config, storage).tracking_uri
    server = f"http://{host}:{port}"
    views = {}
    if not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists():
        views = stored_views(uri, server)  # a store that is not one is named here, not in the UI server's traceback
    console.print(f"MLflow UI for {masked(uri)} on {server}", highlight=False)
    for name, url in views.items():
        console.print(f"{name}, every training's curve: {url}", highlight=False)
    # MLflow's job runners serve GenAI features orch does not use: off unless the user turned them on.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                              "false")}
    raise typer.Exit(subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
                                      "--port", str(port), "--workers", str(workers)], env=env))


@app.command(epilog=EXAMPLES["report"])
@_exits_cleanly
def report(
    name: str = typer.Argument(..., help="Experiment name (its latest run unless --invocation)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for report.md and its PNGs (default reports/NAME)."),
    invocation: Optional[str] = typer.Option(None, "--invocation", help="A run other than the latest, e.g. run-20250101-120000."),
    config: Optional[Path] = typer.Option(None, "--config", help="Read tracking.uri from this YAML."),
    storage: str = typer.Option(DEFAULT_STORAGE, "--storage", help=STORAGE_HELP),
):
    """Ablation report: mean ± 95 % CI per cell and factor, a tested verdict and a plot per factor (Markdown + PNG)."""
    from orchestrator.reporting.report import write_report

    path = write_report(name, _reading(config, storage).tracking_uri, out or Path("reports") / name, invocation)
    console.print(f"report: {path}", highlight=False)


@app.command(epilog=EXAMPLES["export"])
@_exits_cleanly
def export(
    name: str = typer.Argument(..., help="Experiment name (its latest run unless --invocation)."),
    metric: str = typer.Option("CIDEr", "--metric", help="Rank trials by this val metric at their best epoch "
                                                         "(rsum, t2i_R5, ... ranks trainer: alignment trials)."),
    top_k: int = typer.Option(1, "--top-k", help="Export this many of the best trials."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the exports (default exports/NAME)."),
    register: bool = typer.Option(False, "--register", help="Also log each to the MLflow Model Registry as NAME; "
                                                               "the best gets the alias champion."),
    invocation: Optional[str] = typer.Option(None, "--invocation", help="A run other than the latest."),
    config: Optional[Path] = typer.Option(None, "--config", help="Read tracking.uri from this YAML."),
    storage: str = typer.Option(DEFAULT_STORAGE, "--storage", help=STORAGE_HELP),
):
    """Export the best trials as folders of model.safetensors, config, vocab, metrics and a model card."""
    from orchestrator.commands.export import CHAMPION, EXPORTABLE, export_best
    from trainers.metrics import SCORE_SCALE

    for rank, item in enumerate(export_best(name, _reading(config, storage).tracking_uri, out or Path("exports") / name,
                                            metric, top_k, register, invocation), start=1):
        registered = f"; registered as {name} version {item.registered_version}" if item.registered_version else ""
        registered += f" (alias {CHAMPION}: models:/{name}@{CHAMPION})" if item.registered_version and rank == 1 else ""
        console.print(f"{item.folder}: {item.pick.variant.id}, val {metric} {item.pick.score:.3f}{registered}",
                      highlight=False)
    if metric in EXPORTABLE:
        console.print(SCORE_SCALE, highlight=False)


@app.command(epilog=EXAMPLES["evaluate"])
@_exits_cleanly
def evaluate(
    model: Path = typer.Option(..., "--model", help="An `orch export` folder (or a training checkpoint folder)."),
    prepared: Path = typer.Option(..., "--prepared", help="A prepared dataset folder (orch prepare)."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", help="Beam width (default: the model's)."),
    length_penalty: Optional[float] = typer.Option(None, "--length-penalty", help="β (default: the model's)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Score a model on a prepared split with any decode settings."""
    import torch

    from trainers.inference import decode_settings, evaluate_split, load_model
    from trainers.metrics import SCORE_SCALE, format_scores

    loaded = load_model(model, "cuda" if torch.cuda.is_available() else "cpu")
    settings = decode_settings(loaded.config.decode, beam_size, length_penalty)
    scores, _ = evaluate_split(loaded, prepared, split, settings)
    if as_json:
        print(json.dumps(scores))
    else:
        print(format_scores(scores))
        console.print(SCORE_SCALE, highlight=False)


@app.command(epilog=EXAMPLES["caption"])
@_exits_cleanly
def caption(
    images: List[Path] = typer.Argument(..., help="Image files."),
    model: Path = typer.Option(..., "--model", help="An `orch export` folder (or a training checkpoint folder)."),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", help="Beam width (default: the model's)."),
    length_penalty: Optional[float] = typer.Option(None, "--length-penalty", help="β (default: the model's)."),
    attention_plot: Optional[Path] = typer.Option(None, "--attention-plot", help="Draw each word's attention: one "
                                                  "image, into this PNG (or a folder); several images, into this "
                                                  "folder, one IMAGE_NAME.png each."),
):
    """Caption images on the CPU: one line per image, `PATH<TAB>caption`; unreadable images are named (exit 2)."""
    from trainers.inference import caption_images, decode_settings, load_model, plot_attention

    plots = attention_targets(images, attention_plot) if attention_plot is not None else {}
    loaded = load_model(model)
    if plots and loaded.config.model.attention in ("none", "mean"):
        raise InputError(f"--attention-plot: {model} learns no attention (model.attention: {loaded.config.model.attention})")
    results = caption_images(loaded, images, decode_settings(loaded.config.decode, beam_size, length_penalty))
    for image, result in zip(images, results):
        if result.error:
            console.print(f"[bold red]error:[/] {result.source}: {result.error}", highlight=False)
            continue
        print(f"{result.source}\t{result.caption}")
        if image in plots:
            console.print(f"attention: {plot_attention(result, plots[image])}", highlight=False)
    if any(result.error for result in results):
        raise typer.Exit(2)


def attention_targets(images: List[Path], target: Path) -> dict[Path, Path]:
    """Where `--attention-plot` draws each image's attention: one image into the PNG named (or
    IMAGE_NAME.png in the folder named); several into the folder named, never beside a file name."""
    if len(images) == 1 and not target.is_dir():
        return {images[0]: target}
    if target.suffix.lower() == ".png" or target.is_file():
        raise InputError(f"--attention-plot {target}: {len(images)} images draw {len(images)} plots (name a folder, "
                         f"e.g. --attention-plot {target.with_suffix('')}/: one IMAGE_NAME.png each)")
    plots = {image: target / f"{image.stem}.png" for image in images}
    if len(set(plots.values())) < len(set(plots)):
        raise InputError(f"--attention-plot {target}: two images share a name, so their plots would overwrite each "
                         "other (caption them in separate commands)")
    return plots


@app.command(epilog=EXAMPLES["align"])
@_exits_cleanly
def align(
    image: Path = typer.Argument(..., help="An image file."),
    sentence: Optional[str] = typer.Argument(None, help="A sentence about the image, in quotes."),
    model: Path = typer.Option(..., "--model", help="An alignment model: an `orch export NAME --metric rsum` folder "
                                                    "or a trial's checkpoint folder."),
    beta: Optional[float] = typer.Option(None, "--beta", min=0.0, help="MRF β: larger gives longer snippets "
                                                                       "(default: the model's alignment.beta)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw the regions with their snippets (or, with "
                                                             "--caption-regions alone, their captions) into this PNG "
                                                             "(the paper's Figure 1)."),
    caption_regions: bool = typer.Option(False, "--caption-regions", help="Also caption every region of the image "
                                                                          "with the region captioner."),
):
    """Align a sentence's snippets with image regions (Karpathy & Fei-Fei 2015): one line per snippet,
    `WORDS<TAB>REGION (BOX)<TAB>REGION CAPTION`; with --caption-regions, one line per region and its caption."""
    from trainers.alignment.aligner import Aligner, plot_alignment

    if sentence is None and not caption_regions:
        raise InputError("give a sentence to align, or --caption-regions to caption the image's regions")
    aligner = Aligner.load(model)
    drawn = None
    if sentence is not None:
        drawn = aligner.align(image, sentence, beta)
        for snippet in drawn.snippets:
            said = f"\t{snippet.caption}" if snippet.caption else ""
            print(f"{snippet.words}\t{_region(snippet)}{said}")
    if caption_regions:
        captioned = aligner.caption_regions(image)
        for snippet in captioned.snippets:
            print(f"{_region(snippet)}\t{snippet.caption}")
        drawn = drawn or captioned
    if plot is not None:
        console.print(f"figure: {plot_alignment(drawn, plot)}", highlight=False)


def _region(snippet) -> str:
    """`region 3 (0.33, 0.00, 0.67, 0.33)`, or `whole image (...)` for region 0."""
    where = "whole image" if snippet.region == 0 else f"region {snippet.region}"
    return f"{where} ({', '.join(f'{c:.2f}' for c in snippet.box)})"


def main() -> None:
    # SIGTERM (a scheduler's cancel, `kill`) ends a command as Ctrl-C does: its runs end KILLED, its lease
    # is released and its scratch folders removed, instead of the process vanishing mid-write.
    signal.signal(signal.SIGTERM, _interrupted)
    app()


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
