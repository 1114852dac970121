"""Caption metrics: pycocoevalcap's standard pipeline, the one place every score comes from.

`orch score`, validation during training and final evaluation all call `score_captions`, so a
number in MLflow means the same as a number in a paper: Stanford PTB tokenization of both sides,
then pycocoevalcap 1.2's Bleu(4), Meteor(), Rouge() and Cider() (CIDEr-D).

The scorers run unchanged; only the plumbing around them differs from COCOEvalCap's, to save time:
- the two PTB processes (references, predictions) run at once;
- METEOR's JVM starts once per process and is kept, since loading its paraphrase table takes
  seconds and training scores every epoch (`stop_meteor` frees its 1 GB sooner);
- METEOR's lines are streamed to it instead of one round trip per image, and it scores in a
  thread while Python computes the other metrics.
Scores are identical (to 1e-7) to COCOEvalCap's. pycocoevalcap is imported when captions are
scored, not when this module is: training and decoding import it through trainers.evaluation, and
need nothing of it until they score (a bare GPU machine may lack it).

Without Java (or with ORCH_NO_JAVA=1) scoring still works, so a training run never dies at its
first validation: a warning is issued, captions are tokenized by `trainers.text.tokenize`, and
METEOR is left out of the result (its key is absent, never NaN, so JSON and MLflow stay valid).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Optional

from trainers.errors import InputError
from trainers.text import tokenize

METRIC_FAMILIES = ("Bleu", "METEOR", "ROUGE_L", "CIDEr")
SCORE_NAMES = {
    "Bleu": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"),
    "METEOR": ("METEOR",),
    "ROUGE_L": ("ROUGE_L",),
    "CIDEr": ("CIDEr",),
}
NO_JAVA_ENV = "ORCH_NO_JAVA"  # set to 1 to score as if Java were missing
Tokenizer = Literal["ptb", "python", "none"]

# Characters the PTB tokenizer and METEOR treat as line ends; a caption holding one would shift
# every later caption onto the wrong image, so they become spaces first.
_LINE_BREAKS = str.maketrans({ch: " " for ch in "\n\r\x0b\x0c\x85\u2028\u2029"})
_SHOWN_KEYS = 10


def _ptb_jar() -> Path:
    """The Stanford CoreNLP jar pycocoevalcap's PTB tokenizer runs."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    return Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR


def java_available() -> bool:
    """Whether the Java scorers (PTB tokenizer, METEOR) can run."""
    if os.environ.get(NO_JAVA_ENV, "") not in ("", "0"):
        return False
    return shutil.which("java") is not None


def score_captions(
    references: Mapping[Hashable, Sequence[str]],
    predictions: Mapping[Hashable, str],
    metrics: Iterable[str] | None = None,
    tokenizer: Tokenizer = "ptb",
) -> dict[str, float]:
    """Score one predicted caption per key against that key's reference captions.

    metrics: families from METRIC_FAMILIES (default all). tokenizer: "ptb" (pycocoevalcap's, the
    standard), "python" (`trainers.text.tokenize`) or "none" (captions are already tokenized).
    Returns {"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr"} for the chosen families, METEOR
    absent when Java is missing.
    """
    families = _chosen_families(metrics)
    if tokenizer not in ("ptb", "python", "none"):
        raise InputError(f"unknown tokenizer {tokenizer!r}: use 'ptb', 'python' or 'none'")
    _check_matching_keys(references, predictions)
    if not java_available() and (tokenizer == "ptb" or "METEOR" in families):
        warnings.warn("Java not found (pycocoevalcap's PTB tokenizer and METEOR need it): tokenizing "
                      "captions in Python and leaving METEOR out of the scores", RuntimeWarning, stacklevel=2)
        tokenizer = "python" if tokenizer == "ptb" else tokenizer
        families = [family for family in families if family != "METEOR"]

    meteor = _shared_meteor() if "METEOR" in families else None  # a new JVM loads while we tokenize
    refs, preds = _tokenized(references, predictions, tokenizer)
    with ThreadPoolExecutor(max_workers=1) as pool:
        meteor_score = pool.submit(meteor.compute_score, refs, preds) if meteor else None
        scores = _python_scores(families, refs, preds)
        if meteor_score:
            scores["METEOR"] = float(meteor_score.result()[0])
    return {name: scores[name] for family in families for name in SCORE_NAMES[family]}


def score_files(references_path: str | Path, predictions_path: str | Path,
                metrics: Iterable[str] | None = None) -> dict[str, float]:
    """Score a COCO results file against a COCO caption-format reference file (PTB tokenizer)."""
    references = _read_references(Path(references_path))
    predictions = _read_predictions(Path(predictions_path))
    try:
        return score_captions(references, predictions, metrics)
    except _KeyMismatch as error:
        same_as_text = {str(key) for key in predictions} == {str(key) for key in references}
        hint = " (the ids match as text: make image_id the same type, string or integer, in both files)"
        raise InputError(f"{predictions_path} does not match {references_path}: {error}"
                         f"{hint if same_as_text else ''}") from None


# The one scale orch prints scores on, in every table, export and report: pycocoevalcap's own, as MLflow stores it.
SCORE_SCALE = "scores: pycocoevalcap scale, as in MLflow (CIDEr 0-10, the others 0-1)"


def format_scores(scores: Mapping[str, float], asked: Optional[Sequence[str]] = None) -> str:
    """A two-column table for the terminal, METEOR marked when it was asked for (`asked`: the metrics
    asked for, None: all) and could not be computed."""
    rows = [(name, f"{value:.4f}") for name, value in scores.items()]
    if "METEOR" not in scores and (asked is None or "METEOR" in asked) and not java_available():
        rows.append(("METEOR", "n/a (Java not found)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


class _KeyMismatch(InputError):
    """Predictions and references cover different keys."""


def _chosen_families(metrics: Iterable[str] | None) -> list[str]:
    if metrics is None:
        return list(METRIC_FAMILIES)
    chosen = list(dict.fromkeys(metrics))
    unknown = [name for name in chosen if name not in METRIC_FAMILIES]
    if unknown or not chosen:
        raise InputError(f"unknown metric(s) {', '.join(map(repr, unknown)) or '(none given)'}: "
                         f"choose from {', '.join(METRIC_FAMILIES)}")
    return [family for family in METRIC_FAMILIES if family in chosen]


def _describe_keys(keys: Sequence[Hashable]) -> str:
    shown = ", ".join(repr(key) for key in keys[:_SHOWN_KEYS])
    more = len(keys) - _SHOWN_KEYS
    return f"{shown} (and {more} more)" if more > 0 else shown


def _check_matching_keys(references: Mapping, predictions: Mapping) -> None:
    if not references:
        raise InputError("no reference captions to score against")
    unknown = [key for key in predictions if key not in references]
    unpredicted = [key for key in references if key not in predictions]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} prediction(s) for images without references: {_describe_keys(unknown)}")
    if unpredicted:
        problems.append(f"{len(unpredicted)} image(s) without a prediction: {_describe_keys(unpredicted)}")
    if problems:
        raise _KeyMismatch("; ".join(problems))
    empty = [key for key, captions in references.items() if not captions]
    if empty:
        raise InputError(f"{len(empty)} image(s) with no reference caption: {_describe_keys(empty)}")


def _tokenized(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str],
               tokenizer: Tokenizer) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]]]:
    """Both sides in pycocoevalcap's shape: {key: [space-joined tokens, ...]}, one prediction each."""
    keys = list(references)
    reference_lines = [caption for key in keys for caption in references[key]]
    prediction_lines = [predictions[key] for key in keys]
    if tokenizer == "ptb":
        reference_lines, prediction_lines = _ptb_tokenize(reference_lines, prediction_lines)
    elif tokenizer == "python":
        reference_lines = [" ".join(tokenize(line)) for line in reference_lines]
        prediction_lines = [" ".join(tokenize(line)) for line in prediction_lines]
    tokenized_references = iter(reference_lines)
    refs = {key: [next(tokenized_references) for _ in references[key]] for key in keys}
    preds = {key: [line] for key, line in zip(keys, prediction_lines)}
    return refs, preds


def _ptb_tokenize(*batches: list[str]) -> list[list[str]]:
    """pycocoevalcap's PTBTokenizer on each batch, one JVM per batch, all started together.

    Each batch gets a file of its own, as in COCOEvalCap: PTB looks past the end of a line ("U.S.
    The" reads differently from "U.S." at the end), so a caption's neighbours must stay the same.
    """
    with tempfile.TemporaryDirectory(prefix="orch-ptb-") as folder:
        files = []
        for index, sentences in enumerate(batches):
            files.append(Path(folder) / f"captions-{index}.txt")
            files[-1].write_text("\n".join(sentence.translate(_LINE_BREAKS) for sentence in sentences),
                                 encoding="utf-8")
        with ThreadPoolExecutor(max_workers=len(batches)) as pool:
            outputs = list(pool.map(_run_ptb, files))
    from pycocoevalcap.tokenizer import ptbtokenizer

    dropped = set(ptbtokenizer.PUNCTUATIONS)
    tokenized = []
    for sentences, output in zip(batches, outputs):
        lines = output.split("\n")[: len(sentences)]
        if len(lines) != len(sentences):
            raise RuntimeError(f"PTB tokenizer returned {len(lines)} lines for {len(sentences)} captions")
        tokenized.append([" ".join(word for word in line.rstrip().split(" ") if word not in dropped)
                          for line in lines])
    return tokenized


def _run_ptb(text_file: Path) -> str:
    command = ["java", "-cp", str(_ptb_jar()), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", str(text_file)]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed: {result.stderr.decode(errors='replace')[-2000:]}")
    return result.stdout.decode("utf-8")


def _python_scores(families: list[str], refs: dict, preds: dict) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    scores: dict[str, float] = {}
    if "Bleu" in families:
        bleu, _ = Bleu(4).compute_score(refs, preds, verbose=0)
        scores.update(zip(SCORE_NAMES["Bleu"], map(float, bleu)))
    if "ROUGE_L" in families:
        scores["ROUGE_L"] = float(Rouge().compute_score(refs, preds)[0])
    if "CIDEr" in families:
        scores["CIDEr"] = float(Cider().compute_score(refs, preds)[0])
    return scores


class _StreamingMeteor:
    """pycocoevalcap's Meteor (same jar, same command, same lines), with its input streamed: a mixin
    that `_streaming_meteor_class` puts before Meteor when METEOR first scores.

    Meteor.compute_score waits for each image's answer before sending the next line; here a
    thread writes every SCORE line while this one reads the answers, then the EVAL line goes as
    before. The JVM sees exactly the same input, so the score is the same.
    """

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        keys = list(gts)
        score_lines = [self._score_line(res[key][0], gts[key]) for key in keys]
        with self.lock:
            try:
                writer = threading.Thread(target=self._write, args=(score_lines,))
                writer.start()
                stats = [self._read_line() for _ in keys]
                writer.join()
                self._write(["EVAL ||| " + " ||| ".join(stats)])
                per_image = [float(self._read_line()) for _ in keys]
                return float(self._read_line()), per_image
            except BaseException:
                self.close()  # out of step with the JVM now; the next caller starts a fresh one
                raise

    def is_running(self) -> bool:
        return self.meteor_p.poll() is None

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # a JVM that died leaves its input unflushable
            self.meteor_p.stdin.close()
        self.meteor_p.kill()
        self.meteor_p.wait()

    @staticmethod
    def _score_line(hypothesis: str, references: list[str]) -> str:
        hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
        line = " ||| ".join(("SCORE", " ||| ".join(references), hypothesis))
        return line.translate(_LINE_BREAKS)  # one line in, one line out, or the stream desyncs

    def _write(self, lines: list[str]) -> None:
        """Sends lines; if the JVM has died, sends nothing: the next read says so, with what it printed."""
        with contextlib.suppress(BrokenPipeError):
            self.meteor_p.stdin.write("".join(line + "\n" for line in lines).encode())
            self.meteor_p.stdin.flush()

    def _read_line(self) -> str:
        line = self.meteor_p.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"METEOR stopped: {self.meteor_p.stderr.read().decode(errors='replace')[-2000:]}")
        return line


@functools.cache
def _streaming_meteor_class() -> type:
    """_StreamingMeteor over pycocoevalcap's Meteor, whose __init__ starts the JVM."""
    from pycocoevalcap.meteor.meteor import Meteor

    return type("_StreamingMeteor", (_StreamingMeteor, Meteor), {})


_meteor_lock = threading.Lock()
_meteor: _StreamingMeteor | None = None


def stop_meteor() -> None:
    """End this process's METEOR JVM (about 1 GB resident) now rather than at exit; scoring restarts it."""
    global _meteor
    with _meteor_lock:
        if _meteor is not None:
            _meteor.close()
            _meteor = None


def _shared_meteor() -> _StreamingMeteor:
    """This process's METEOR JVM, started on first use and closed when the process exits."""
    global _meteor
    with _meteor_lock:
        if _meteor is None or not _meteor.is_running():
            _meteor = _streaming_meteor_class()()
            atexit.register(_meteor.close)
        return _meteor


def _read_json(path: Path, what: str):
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{what} file {path} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{what} file {path} could not be read: {error}") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{what} file {path} is not valid JSON (line {error.lineno}: {error.msg})") from None


def _caption_entries(entries, path: Path, where: str) -> list[tuple[Hashable, str]]:
    """(image_id, caption) pairs, each entry checked so a bad one is named by its position."""
    if not isinstance(entries, list):
        raise InputError(f"{path}: {where} must be a list of {{'image_id', 'caption'}} objects")
    pairs = []
    for index, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("caption"), str)
                and isinstance(entry.get("image_id"), (str, int))):
            raise InputError(f"{path}: {where}[{index}] needs an 'image_id' (string or integer) and a "
                             f"string 'caption', got {str(entry)[:200]}")
        pairs.append((entry["image_id"], entry["caption"]))
    return pairs


def _read_references(path: Path) -> dict[Hashable, list[str]]:
    """{image_id: captions}, in the order of the file's 'images' list as COCOEvalCap scores them."""
    data = _read_json(path, "references")
    if not isinstance(data, dict) or "annotations" not in data:
        raise InputError(f"{path}: references must be COCO caption format, an object with 'annotations'")
    captions: dict[Hashable, list[str]] = {}
    for image_id, caption in _caption_entries(data["annotations"], path, "annotations"):
        captions.setdefault(image_id, []).append(caption)
    listed = [image.get("id") for image in data.get("images", []) if isinstance(image, dict)]
    uncaptioned = [image_id for image_id in listed if image_id not in captions]
    if uncaptioned:
        raise InputError(f"{path}: {len(uncaptioned)} image(s) in 'images' have no caption in 'annotations': "
                         f"{_describe_keys(uncaptioned)}")
    order = list(dict.fromkeys(listed + list(captions)))
    return {image_id: captions[image_id] for image_id in order}


def _read_predictions(path: Path) -> dict[Hashable, str]:
    data = _read_json(path, "predictions")
    predictions: dict[Hashable, str] = {}
    duplicated = []
    for image_id, caption in _caption_entries(data, path, "the top level"):
        if image_id in predictions:
            duplicated.append(image_id)
        predictions[image_id] = caption
    if duplicated:
        raise InputError(f"{path}: {len(duplicated)} image(s) have more than one prediction: "
                         f"{_describe_keys(duplicated)}")
    return predictions
