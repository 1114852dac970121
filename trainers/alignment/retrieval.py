"""Image-sentence retrieval metrics: R@1, R@5, R@10 (percent) and median rank, both directions.

A query's rank counts the wrong items scoring at least as high as its best right one, so ties
count against the model: a model that scores everything alike ranks last, not first.
"""

from __future__ import annotations

import numpy as np

RECALLS = (1, 5, 10)


def retrieval_metrics(scores: np.ndarray, sentence_image: np.ndarray) -> dict[str, float]:
    """scores (N images, K sentences); sentence_image (K,) the image each sentence describes.

    i2t: each image queries the sentences, any of its own counts as found. t2i: each sentence
    queries the images. Keys i2t_R1 ... t2i_medr, plus rsum, the sum of the six recalls.
    """
    scores = np.asarray(scores, dtype=np.float64)
    sentence_image = np.asarray(sentence_image)
    own = sentence_image[None, :] == np.arange(scores.shape[0])[:, None]  # (N, K)
    best_own = np.where(own, scores, -np.inf).max(axis=1)  # (N,)
    i2t_ranks = ((scores >= best_own[:, None]) & ~own).sum(axis=1)  # (N,)
    true = scores[sentence_image, np.arange(scores.shape[1])]  # (K,)
    t2i_ranks = (scores >= true[None, :]).sum(axis=0) - 1  # (K,): every image but its own
    metrics = {**_summary("i2t", i2t_ranks), **_summary("t2i", t2i_ranks)}
    metrics["rsum"] = sum(metrics[f"{d}_R{k}"] for d in ("i2t", "t2i") for k in RECALLS)
    return metrics


def _summary(direction: str, ranks: np.ndarray) -> dict[str, float]:
    """ranks: 0 = found first. medr is 1-based, as the paper reports it."""
    metrics = {f"{direction}_R{k}": 100.0 * float(np.mean(ranks < k)) for k in RECALLS}
    metrics[f"{direction}_medr"] = float(np.median(ranks + 1))
    return metrics


def chance_recall(k: int, candidates: int, right: int = 1) -> float:
    """Percent of queries a random ranking finds in its top k: `right` of `candidates` items are right."""
    if k >= candidates - right + 1:
        return 100.0
    miss = 1.0
    for i in range(right):
        miss *= (candidates - k - i) / (candidates - i)
    return 100.0 * (1.0 - miss)
