"""Time `score_files` against plain pycocoevalcap on the COCO Karpathy test fixture.

Both run in this process, one after the other: plain first (COCO(gt).loadRes(pred), PTBTokenizer
on each side, then Bleu(4), Meteor(), Rouge(), Cider() exactly as COCOEvalCap.evaluate does,
without SPICE), then ours. Prints one JSON object: both wall times and their ratio, the CPU time
each used with its Java processes (steadier than wall time on a shared machine), per-metric times
of each (ours: `score_files` with one metric family, tokenization included, METEOR's JVM started
by the first of them), and the largest score difference between the two.

    PYTHONPATH=. python benchmarks/bench_score.py [--fixture DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import resource
import time
from pathlib import Path

from trainers.metrics import METRIC_FAMILIES, score_files, stop_meteor

DEFAULT_FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "coco_karpathy_test_eval"


def plain_pycocoevalcap(references: Path, predictions: Path) -> tuple[dict[str, float], dict[str, float]]:
    """COCOEvalCap.evaluate's steps, timed one by one: (scores, seconds per step)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    seconds: dict[str, float] = {}
    scores: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools and the scorers print progress
        start = time.perf_counter()
        coco = COCO(str(references))
        results = coco.loadRes(str(predictions))
        image_ids = coco.getImgIds()
        gts = {image_id: coco.imgToAnns[image_id] for image_id in image_ids}
        res = {image_id: results.imgToAnns[image_id] for image_id in image_ids}
        tokenizer = PTBTokenizer()
        gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
        seconds["load_and_tokenize"] = time.perf_counter() - start
        scorers = [(Bleu(4), "Bleu"), (Meteor(), "METEOR"), (Rouge(), "ROUGE_L"), (Cider(), "CIDEr")]
        for scorer, family in scorers:  # Meteor() starts its JVM above, as in COCOEvalCap
            start = time.perf_counter()
            score, _ = scorer.compute_score(gts, res)
            seconds[family] = time.perf_counter() - start
            if family == "Bleu":
                scores.update({f"Bleu_{n}": value for n, value in enumerate(score, 1)})
            else:
                scores[family] = float(score)
        del scorers, scorer  # Meteor.__del__ ends its JVM, so the CPU it used gets counted
        gc.collect()
    return scores, seconds


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the Java tokenizers and scorers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    fixture = parser.parse_args().fixture
    references = fixture / "image_caption_gt.json"
    predictions = fixture / "image_caption_prediction.json"

    start, cpu_start = time.perf_counter(), cpu_seconds()
    plain_scores, plain_seconds = plain_pycocoevalcap(references, predictions)
    plain_total, plain_cpu = time.perf_counter() - start, cpu_seconds() - cpu_start

    start, cpu_start = time.perf_counter(), cpu_seconds()
    our_scores = score_files(references, predictions)
    our_total = time.perf_counter() - start
    stop_meteor()  # end the kept METEOR JVM so its CPU time is counted
    our_cpu = cpu_seconds() - cpu_start

    our_seconds = {}
    for family in METRIC_FAMILIES:
        start = time.perf_counter()
        score_files(references, predictions, metrics=[family])
        our_seconds[family] = time.perf_counter() - start

    print(json.dumps({
        "fixture": str(fixture),
        "images": len(json.loads(predictions.read_text())),
        "pycocoevalcap_seconds": round(plain_total, 2),
        "orch_score_files_seconds": round(our_total, 2),
        "speedup": round(plain_total / our_total, 2),
        "pycocoevalcap_cpu_seconds": round(plain_cpu, 2),
        "orch_score_files_cpu_seconds": round(our_cpu, 2),
        "pycocoevalcap_step_seconds": {name: round(value, 2) for name, value in plain_seconds.items()},
        "orch_one_family_seconds": {name: round(value, 2) for name, value in our_seconds.items()},
        "max_abs_score_difference": max(abs(plain_scores[name] - our_scores[name]) for name in plain_scores),
        "scores": our_scores,
    }, indent=1))


if __name__ == "__main__":
    main()
