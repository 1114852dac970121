"""Hand-written Karpathy split JSON files and their images, for the data tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def image_entry(filename: str, split: str, imgid: int, captions: list[str], filepath: str | None = None) -> dict:
    entry = {"filename": filename, "split": split, "imgid": imgid,
             "sentences": [{"raw": raw, "tokens": raw.lower().split(), "imgid": imgid, "sentid": imgid * 10 + k}
                           for k, raw in enumerate(captions)]}
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def write_karpathy(root: Path, entries: list[dict], name: str = "flickr8k", color=(10, 20, 30)) -> Path:
    """dataset.json under root plus a small solid-colour PNG for every entry that lacks one."""
    for entry in entries:
        path = root / entry.get("filepath", "") / entry["filename"]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 9), color).save(path)
    json_path = root / "dataset.json"
    json_path.write_text(json.dumps({"dataset": name, "images": entries}))
    return json_path
