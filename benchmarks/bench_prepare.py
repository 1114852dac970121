"""`orch prepare` throughput and memory on a synthetic dataset.

    PYTHONPATH=. python benchmarks/bench_prepare.py [--n 1000] [--size 64] [--image-sizes 256 64]

Writes an `orch synth` dataset (n images of size px PNG), plus a copy whose images are 500x375
JPEGs (Flickr-sized photos), then prepares each at every --image-size in a fresh process and
prints one JSON object: images/s, and the peak RSS next to the RSS before preparing and the size
of the image arrays written, which shows that memory does not grow with the dataset.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _prepare_once(json_path: Path, images_dir: Path, out: Path, image_size: int, results) -> None:
    from trainers.data.prepare import prepare_dataset

    before = _rss_mib()
    started = time.perf_counter()
    result = prepare_dataset(json_path, images_dir, out, min_word_freq=1, image_size=image_size)
    seconds = time.perf_counter() - started
    images = sum(counts.images for counts in result.manifest.splits.values())
    results.put({
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "image_arrays_mib": round(images * 3 * image_size**2 / 2**20, 1),
    })


def _jpeg_copy(synth: Path, out: Path) -> Path:
    """The same dataset with every image upscaled to 500x375 and stored as JPEG."""
    document = json.loads((synth / "dataset.json").read_text())
    for entry in document["images"]:
        target = out / entry["filepath"] / entry["filename"].replace(".png", ".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(synth / entry["filepath"] / entry["filename"]).resize((500, 375)).save(target, quality=90)
        entry["filename"] = target.name
    (out / "dataset.json").write_text(json.dumps(document))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[256, 64])
    args = parser.parse_args()

    from trainers.data.synthetic import write_synthetic_dataset

    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        write_synthetic_dataset(work / "synth", n=args.n, size=args.size, seed=0)
        sources = {f"png_{args.size}px": work / "synth", "jpeg_500x375": _jpeg_copy(work / "synth", work / "jpeg")}
        context = multiprocessing.get_context("spawn")  # a fresh process per run: its own peak RSS
        runs = {}
        for source, folder in sources.items():
            for image_size in args.image_sizes:
                results = context.Queue()
                out = work / f"prepared_{source}_{image_size}"
                process = context.Process(target=_prepare_once,
                                          args=(folder / "dataset.json", folder, out, image_size, results))
                process.start()
                runs[f"{source}_to_{image_size}"] = results.get()
                process.join()
        print(json.dumps({"n": args.n, "cpus": os.cpu_count(), "runs": runs}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
