import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.batching import ImageGroupedBatches, encode_distinct


def _batches(caption_image, batch_size, seed=0):
    return list(ImageGroupedBatches(caption_image, batch_size, torch.Generator().manual_seed(seed)))


@settings(max_examples=50, deadline=None)
@given(captions_per_image=st.lists(st.integers(1, 7), min_size=1, max_size=30), batch_size=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_every_caption_once_per_epoch_with_each_images_captions_together(captions_per_image, batch_size, seed):
    caption_image = [image for image, count in enumerate(captions_per_image) for _ in range(count)]
    batches = _batches(caption_image, batch_size, seed)
    order = [caption for batch in batches for caption in batch]
    assert sorted(order) == list(range(len(caption_image)))
    assert len(batches) == len(ImageGroupedBatches(caption_image, batch_size, torch.Generator()))
    assert all(len(batch) == batch_size for batch in batches[:-1])
    images_in_order = [caption_image[c] for c in order]
    runs = [image for i, image in enumerate(images_in_order) if i == 0 or images_in_order[i - 1] != image]
    assert len(runs) == len(captions_per_image)  # one contiguous run of captions per image


def test_the_image_order_is_shuffled_by_the_generator():
    caption_image = [image for image in range(50) for _ in range(5)]
    first, again, other = _batches(caption_image, 20, 0), _batches(caption_image, 20, 0), _batches(caption_image, 20, 1)
    assert first == again and first != other
    assert [caption_image[c] for c in first[0]] != [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5


def test_encode_distinct_encodes_each_image_once_and_keeps_the_batch_order():
    images = torch.arange(4.0).repeat_interleave(3).view(12, 1)[torch.tensor([0, 3, 1, 6, 9, 4, 2, 10, 11, 7, 5, 8])]
    rows = images.view(-1).long()  # (12,) the image row of each item: equal rows, equal images
    seen = []

    def encode(batch):
        seen.append(batch.shape[0])
        return batch.view(-1, 1, 1) * torch.ones(1, 2, 3)  # (U, P, C)

    features = encode_distinct(encode, images, rows)
    assert seen == [4]
    assert torch.equal(features, images.view(-1, 1, 1) * torch.ones(1, 2, 3))
