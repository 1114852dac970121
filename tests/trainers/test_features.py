"""The feature cache refuses features float16 cannot hold, leaves nothing half-written behind, and
gives each row its own image's features wherever a run holds them."""

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
        return (images.mean(dim=(2, 3)).unsqueeze(1).repeat(1, 4, 1) @ torch.eye(3) / 3.0)  # (B, P=4, C=3)


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
    from trainers.data.loaders import LazyArray
    from trainers.features import FeatureStore, resize_batch

    dataset = PreparedDataset(prepared_dir)
    encoder = Linear()
    paths = cached_features(dataset, encoder, encoder_name="linear", image_size=32, encoded_size=2,
                            cache_dir=tmp_path, device=torch.device("cpu"))
    store = FeatureStore(paths["train"], torch.device("cpu"), where=where)
    rows = torch.tensor([5, 0, 17, 5, 3])
    source = store.loader_source()
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
               cache_key(dataset, encoder, **base, autocast=torch.bfloat16)]
    dataset.manifest = {**dataset.manifest, "source_sha256": "0" * 64}
    changed.append(cache_key(dataset, encoder, **base))
    dataset.manifest = {**dataset.manifest, "options": {**dataset.manifest["options"], "max_len": 7}}
    changed.append(cache_key(dataset, encoder, **base))
    assert len({key, *changed}) == len(changed) + 1
