import pickle

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainers.data.loaders import CaptionPairs, LazyArray, SplitImages
from trainers.data.prepared import PreparedDataset


def test_caption_pairs_give_one_item_per_caption_with_its_image(prepared_dir):
    split = PreparedDataset(prepared_dir).split("val")
    pairs = CaptionPairs(split)
    assert len(pairs) == 20
    image, caption, length, row = pairs[7]
    assert row == 1 and image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert torch.equal(image, torch.from_numpy(np.array(split.images[1])))
    assert caption.dtype == torch.int64 and caption.shape == (32,)
    assert caption[0] == 1 and caption[length - 1] == 2 and (caption[length:] == 0).all()


def test_split_images_give_one_item_per_image(prepared_dir):
    split = PreparedDataset(prepared_dir).split("test")
    images = SplitImages(split)
    assert len(images) == 4
    image, row = images[3]
    assert row == 3 and torch.equal(image, torch.from_numpy(np.array(split.images[3])))


def test_another_per_row_source_can_stand_in_for_the_images(prepared_dir):
    split = PreparedDataset(prepared_dir).split("val")
    features = np.arange(4 * 6 * 2, dtype=np.float16).reshape(4, 6, 2)  # (N, P, C)
    feature, _caption, _length, row = CaptionPairs(split, images=features)[19]
    assert row == 3 and torch.equal(feature, torch.from_numpy(features[3]))


def test_datasets_pickle_as_paths_and_load_in_worker_processes(prepared_dir):
    split = PreparedDataset(prepared_dir).split("train")
    pairs = CaptionPairs(split)
    pairs[0]  # opens the memory maps in this process
    assert len(pickle.dumps(pairs)) < 2000  # paths only, not the arrays
    loader = DataLoader(pairs, batch_size=40, num_workers=2)
    batches = list(loader)
    assert sum(len(batch[3]) for batch in batches) == 160
    images, captions, lengths, rows = batches[0]
    assert images.shape == (40, 3, 32, 32) and captions.shape == (40, 32) and lengths.shape == (40,)
    assert torch.equal(images[5], torch.from_numpy(np.array(split.images[rows[5]])))


def test_lazy_array_opens_on_first_use(prepared_dir):
    array = LazyArray(prepared_dir / "test" / "images.npy")
    copy = pickle.loads(pickle.dumps(array))
    assert len(copy) == 4 and copy[2].shape == (3, 32, 32)
