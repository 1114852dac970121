"""The feature cache refuses features float16 cannot hold, leaves nothing half-written behind, is
reused by later runs, and gives each row its own image's features wherever a run holds them."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from trainers.data.prepared import PreparedDataset
from trainers.errors import InputError
from trainers.features import cached_features


class Exploding(nn.Module):
    """A (B, 3, S, S) -> (B, 4, 3) 'encoder' whose features grow past float16's 65504."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3)).unsqueeze(1).repeat(1, 4, 1) * 1e6 + 1e5  # (B, P=4, C=3)


def test_features_float16_cannot_hold_are_an_input_error_and_leave_no_cache(prepared_dir, tmp_path):
    with pytest.raises(InputError, match="overflow float16.*data.feature_cache: false"):
        cached_features(PreparedDataset(prepared_dir), Exploding(), encoder_name="exploding", image_size=32,
                        encoded_size=2, cache_dir=tmp_path, device=torch.device("cpu"))
    assert not list(tmp_path.rglob("*.npy*")) and not list(tmp_path.rglob("complete.json"))


class Linear(nn.Module):
    """A (B, 3, S, S) -> (B, 4, 3) 'encoder' whose features bf16 rounds."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.mean(dim=(2, 3)).unsqueeze(1).repeat(1, 4, 1) @ torch.eye(3, device=images.device) / 3.0)  # (B, P=4, C=3)


def test_a_cache_built_under_autocast_is_kept_apart_from_the_float32_one(prepared_dir, tmp_path):
    dataset = PreparedDataset(prepared_dir)
    common = dict(encoder_name="linear", image_size=32, encoded_size=2, cache_dir=tmp_path, device=torch.device("cpu"))
    exact = cached_features(dataset, Linear(), **common)
    rounded = cached_features(dataset, Linear(), **common, autocast=torch.bfloat16)
    assert exact["train"].parent != rounded["train"].parent
    assert exact["train"].is_file() and rounded["train"].is_file()


def test_amp_auto_is_float32_on_the_cpu():
    from trainers.loop import autocast_dtype

    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


@pytest.mark.parametrize("where", ["mapped", "host", "device"])
def test_a_store_gives_each_row_its_own_images_features_wherever_it_holds_them(prepared_dir, tmp_path, where):
    """Row by row, a batch from the store equals the encoder's features of that row's image (float16),
    whether the loader read them (mapped) or the store gathered them (host, device)."""
    from trainers.data.loaders import LazyArray, RowsOnly
    from trainers.features import FeatureStore, resize_batch

    dataset = PreparedDataset(prepared_dir)
    encoder = Linear()
    paths = cached_features(dataset, encoder, encoder_name="linear", image_size=32, encoded_size=2,
                            cache_dir=tmp_path, device=torch.device("cpu"))
    store = FeatureStore(paths["train"], torch.device("cpu"), where=where)
    assert (store.where, len(store)) == (where, 32)
    rows = torch.tensor([5, 0, 17, 5, 3])
    source = store.loader_source()
    # A held store's loader reads no features, only the row numbers.
    assert isinstance(source, LazyArray if where == "mapped" else RowsOnly) and len(source) == 32
    inputs = torch.stack([torch.from_numpy(np.array(source[int(r)])) for r in rows])  # as the loader collates
    batch = store.batch(inputs, rows)
    images = torch.from_numpy(np.array(LazyArray(dataset.split("train").images_path)[rows.numpy()]))
    expected = encoder(resize_batch(images, 32)).half()  # (B, P, C)
    assert batch.dtype == torch.float16 and torch.equal(batch, expected)


def test_features_are_placed_by_the_memory_they_would_take():
    from trainers.features import placement

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert placement(4 << 30, cpu, 0, 1 << 40) == "mapped"
    assert placement(4 << 30, gpu, 80 << 30, 100 << 30) == "device"  # 4.8 GB Flickr8k cache, an idle H100
    assert placement(4 << 30, gpu, 8 << 30, 100 << 30) == "host"
    assert placement(40 << 30, gpu, 8 << 30, 100 << 30) == "mapped"
    assert placement(25, gpu, 100, 0) == "device"  # exactly GPU_SHARE of the free memory still fits
    assert placement(26, gpu, 100, 104) == "host"  # exactly HOST_SHARE of the available memory
    assert placement(27, gpu, 100, 104) == "mapped"


def test_images_become_floats_in_0_1_and_are_resized_only_when_their_size_differs():
    from trainers.features import resize_batch

    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 8, 8).contiguous()
    same = resize_batch(images, 8)
    assert same.dtype == torch.float32 and same.shape == (2, 3, 8, 8)
    assert torch.equal(same[0, :, 0, 0], torch.tensor([0.0, 0.2, 1.0]))
    smaller = resize_batch(images, 4)  # a flat image stays flat whatever the filter
    assert smaller.shape == (2, 3, 4, 4) and torch.allclose(smaller[1, :, 3, 3], torch.tensor([0.0, 0.2, 1.0]))
    checker = (torch.arange(8).view(8, 1) + torch.arange(8)) % 2 * 255  # (8, 8): antialiasing averages it
    halved = resize_batch(checker.to(torch.uint8).expand(1, 3, 8, 8), 4)
    assert torch.allclose(halved, torch.full((1, 3, 4, 4), 0.5), atol=0.02)


@pytest.mark.parametrize("size", [5, 6])
def test_images_are_shrunk_as_pil_shrinks_them(size):
    """Antialiased, as PIL's bilinear resize (what torchvision's own resize matches): without the
    antialiasing filter a shrunk photo aliases, 40-80 levels off here."""
    from PIL import Image

    from trainers.features import resize_batch

    images = torch.randint(0, 256, (1, 3, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ours = resize_batch(images, size)[0] * 255  # (3, size, size)
    pil = torch.stack([torch.from_numpy(np.array(Image.fromarray(images[0, c].numpy()).resize((size, size),
                                                                                        Image.BILINEAR)))
                       for c in range(3)]).float()  # (3, size, size)
    assert (ours - pil).abs().max() < 1.0


def test_the_cache_key_changes_with_everything_that_changes_the_features(prepared_dir):
    """The dataset's source and options, the encoder's name and weights, the image and grid sizes, autocast."""
    from trainers.features import cache_key, encoder_digest

    dataset = PreparedDataset(prepared_dir)
    torch.manual_seed(0)
    encoder = nn.Linear(3, 3)
    base = dict(encoder_name="linear", image_size=32, encoded_size=2)
    key = cache_key(dataset, encoder, **base)
    assert len(key) == 20 and key == cache_key(dataset, encoder, **base)
    other_weights = nn.Linear(3, 3)
    assert len(encoder_digest(encoder)) == 16 and encoder_digest(encoder) != encoder_digest(other_weights)
    changed = [cache_key(dataset, other_weights, **base),
               cache_key(dataset, encoder, **{**base, "encoder_name": "resnet18"}),
               cache_key(dataset, encoder, **{**base, "image_size": 64}),
               cache_key(dataset, encoder, **{**base, "encoded_size": 3}),
               cache_key(dataset, encoder, **base, autocast=torch.bfloat16),
               cache_key(dataset, encoder, **base, autocast=torch.float16)]
    dataset.manifest = {**dataset.manifest, "source_sha256": "0" * 64}
    changed.append(cache_key(dataset, encoder, **base))
    dataset.manifest = {**dataset.manifest, "options": {**dataset.manifest["options"], "max_len": 7}}
    changed.append(cache_key(dataset, encoder, **base))
    assert len({key, *changed}) == len(changed) + 1
    last = cache_key(dataset, encoder, **base)
    options = dataset.manifest["options"]
    dataset.manifest = {**dataset.manifest, "options": dict(reversed(list(options.items())))}  # listed otherwise
    assert list(dataset.manifest["options"]) != list(options) and cache_key(dataset, encoder, **base) == last


class Counting(Linear):
    """Linear, counting the images it encodes (a split's probe image included)."""

    def __init__(self):
        super().__init__()
        self.images = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.images += images.shape[0]
        return super().forward(images)


def test_later_runs_read_the_cache_and_a_split_asked_for_later_is_added(prepared_dir, tmp_path, monkeypatch):
    """32 train, 4 val, 4 test images: each split is encoded once, by the first run that asks for it.
    The cache folder holds the key's folder and its lock, nothing else is written anywhere."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    dataset, encoder = PreparedDataset(prepared_dir), Counting()
    cache_dir = tmp_path / "not" / "yet" / "made"
    common = dict(encoder_name="linear", image_size=32, encoded_size=2, cache_dir=cache_dir, device=torch.device("cpu"))
    encoded = []
    for splits in [("train",), ("train", "val"), ("train", "val", "test"), ("val", "test", "train")]:
        before = encoder.images
        paths = cached_features(dataset, encoder, **common, splits=splits)
        encoded.append(encoder.images - before)
        assert list(paths) == list(splits)
    assert encoded == [32 + 1, 4 + 1, 4 + 1, 0]
    folder = paths["train"].parent
    assert sorted(path.name for path in cache_dir.iterdir()) == [folder.name, folder.name + ".lock"]
    assert sorted(path.name for path in folder.iterdir()) == ["complete.json", "test.npy", "train.npy", "val.npy"]
    assert json.loads((folder / "complete.json").read_text()) == {
        "splits": ["test", "train", "val"], "encoder": "linear", "image_size": 32}
    assert not list((tmp_path / "elsewhere").iterdir())
    assert np.load(paths["val"]).shape == (4, 4, 3)


def test_a_split_without_images_gets_no_cache_and_one_image_is_enough(synth_dir, tmp_path):
    from trainers.data.prepare import prepare_dataset

    karpathy = json.loads((synth_dir / "dataset.json").read_text())
    val = [image for image in karpathy["images"] if image["split"] == "val"]
    for image in karpathy["images"]:  # one val image, no test image
        if image["split"] == "test" or (image["split"] == "val" and image is not val[0]):
            image["split"] = "train"
    (tmp_path / "one-val.json").write_text(json.dumps(karpathy))
    prepare_dataset(tmp_path / "one-val.json", synth_dir, tmp_path / "prepared", min_word_freq=1, max_len=30,
                    image_size=32)
    dataset = PreparedDataset(tmp_path / "prepared")
    paths = cached_features(dataset, Linear(), encoder_name="linear", image_size=32, encoded_size=2,
                            cache_dir=tmp_path / "cache", device=torch.device("cpu"))
    assert list(paths) == ["train", "val"]
    assert json.loads((paths["val"].parent / "complete.json").read_text())["splits"] == ["train", "val"]
    image = torch.from_numpy(np.array(dataset.split("val").images))  # (1, 3, 32, 32)
    assert torch.equal(torch.from_numpy(np.load(paths["val"])), Linear()(image.float() / 255).half())


def test_features_cached_under_autocast_are_the_encoders_under_autocast(prepared_dir, tmp_path):
    """bf16 on the CPU: the cache holds what the encoder gives under autocast, not its float32 features."""
    from trainers.features import resize_batch

    dataset = PreparedDataset(prepared_dir)
    paths = cached_features(dataset, Linear(), encoder_name="linear", image_size=32, encoded_size=2,
                            cache_dir=tmp_path, device=torch.device("cpu"), autocast=torch.bfloat16)
    images = resize_batch(torch.from_numpy(np.array(dataset.split("val").images)), 32)  # (4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = Linear()(images).half()  # (4, P, C)
    cached = torch.from_numpy(np.load(paths["val"]))
    assert torch.equal(cached, rounded) and not torch.equal(cached, Linear()(images).half())


@pytest.mark.parametrize("where", ["host", "device"])
def test_a_held_store_loads_a_split_longer_than_its_chunks_whole(tmp_path, where):
    """600 rows, loaded 256 at a time: the last rows are there too."""
    from trainers.features import FeatureStore

    features = np.random.default_rng(0).standard_normal((600, 3, 2)).astype(np.float16)  # (N, P, C)
    np.save(tmp_path / "train.npy", features)
    store = FeatureStore(tmp_path / "train.npy", torch.device("cpu"), where=where)
    assert len(store) == 600 and torch.equal(store.held, torch.from_numpy(features))
    rows = torch.tensor([599, 256, 0, 511, 512])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the gather fills a buffer of the batch's shape: nothing is resized
        assert torch.equal(store.batch(torch.empty(0), rows), torch.from_numpy(features[rows.numpy()]))


def test_on_the_cpu_a_store_is_read_from_its_memory_mapped_file(prepared_dir, tmp_path):
    from trainers.data.loaders import LazyArray
    from trainers.features import FeatureStore

    paths = cached_features(PreparedDataset(prepared_dir), Linear(), encoder_name="linear", image_size=32,
                            encoded_size=2, cache_dir=tmp_path, device=torch.device("cpu"))
    store = FeatureStore(paths["val"], torch.device("cpu"))
    assert (store.where, store.held, len(store)) == ("mapped", None, 4)
    assert isinstance(store.loader_source(), LazyArray)


def test_another_image_size_or_grid_gets_its_own_cache(prepared_dir, tmp_path):
    """Two trainings of one sweep that differ only in image_size or encoded_size never share features."""
    dataset = PreparedDataset(prepared_dir)

    def cache(image_size, encoded_size):
        return cached_features(dataset, Linear(), encoder_name="linear", image_size=image_size,
                               encoded_size=encoded_size, cache_dir=tmp_path, device=torch.device("cpu"))["val"]

    folders = {cache(32, 2).parent, cache(16, 2).parent, cache(32, 3).parent, cache(16, 3).parent}
    assert len(folders) == 4 and len(list(tmp_path.glob("*.lock"))) == 4


@pytest.mark.parametrize("where, held_on", [("device", "meta"), ("host", "cpu"), ("mapped", None)])
def test_a_store_holds_its_split_where_its_placement_says_and_each_batch_reaches_its_device(tmp_path, where, held_on):
    """PyTorch's meta device stands in for a GPU: it keeps where each tensor lives and its shape, not
    values (those are checked on the CPU above, and on a real GPU by tests/trainers/test_gpu.py). A
    `device=` dropped anywhere would leave a split or a batch on the CPU."""
    from trainers.features import FeatureStore

    features = np.random.default_rng(0).standard_normal((300, 3, 2)).astype(np.float16)  # (N, P, C)
    np.save(tmp_path / "train.npy", features)
    store = FeatureStore(tmp_path / "train.npy", torch.device("meta"), where=where)
    assert (store.held.device.type if store.held is not None else None) == held_on
    rows = torch.tensor([299, 0, 7])
    batch = store.batch(torch.from_numpy(features[rows.numpy()]), rows)
    assert (batch.device.type, batch.shape, batch.dtype) == ("meta", (3, 3, 2), torch.float16)
