import json
import shutil

import numpy as np
import pytest

from trainers.data.prepared import PreparedDataset
from trainers.errors import InputError


def test_the_reader_exposes_every_split(prepared_dir):
    dataset = PreparedDataset(prepared_dir)
    assert dataset.manifest["splits"]["train"] == {"images": 32, "captions": 160}
    assert dataset.manifest["options"]["image_size"] == 32
    for name, images in [("train", 32), ("val", 4), ("test", 4)]:
        split = dataset.split(name)
        assert len(split) == images and split.images.shape == (images, 3, 32, 32)
        assert split.captions.shape == (images * 5, 32) and split.lengths.shape == (images * 5,)
        assert len(split.references) == len(split.ground_truth) == len(split.image_ids) == images
        assert all(len(refs) == 5 for refs in split.references)
        assert all(truth["objects"] for truth in split.ground_truth)
    train = dataset.split("train")
    first = dataset.vocab.decode(train.captions[0])
    assert first in train.references[train.caption_image[0]]
    assert "train: 32 images, 160 captions" in dataset.describe()


def test_a_folder_without_manifest_is_not_a_prepared_dataset(tmp_path):
    with pytest.raises(InputError, match=r"not a prepared dataset \(no manifest.json\): run orch prepare"):
        PreparedDataset(tmp_path)


def copy_of(prepared_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared_dir, copy)
    return copy


def test_a_damaged_manifest_names_the_key(prepared_dir, tmp_path):
    copy = copy_of(prepared_dir, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["vocab_size"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"manifest.json: not a valid prepared dataset manifest \(vocab_size"):
        PreparedDataset(copy)


def test_arrays_that_disagree_with_the_manifest_are_rejected(prepared_dir, tmp_path):
    copy = copy_of(prepared_dir, tmp_path)
    np.save(copy / "val" / "images.npy", np.zeros((3, 3, 32, 32), dtype=np.uint8))
    dataset = PreparedDataset(copy)
    with pytest.raises(InputError, match=r"val/images.npy: holds uint8 \(3, 3, 32, 32\), the manifest says"):
        dataset.split("val")
    (copy / "test" / "lengths.npy").unlink()
    with pytest.raises(InputError, match="test/lengths.npy: unreadable"):
        dataset.split("test")
    with pytest.raises(InputError, match="no split 'restval'"):
        dataset.split("restval")
