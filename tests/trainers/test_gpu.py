"""The GPU path as orch runs it there: bf16 autocast, channels_last encoders, batched beam search.

Marked `gpu` and skipped without CUDA: `python -m pytest -m gpu` (benchmarks/gpu.sh runs them).
A GPU machine may have PyTorch and pytest and little else: the tests that train a whole run score
its captions (pycocoevalcap, and Java for its tokenizer), and are skipped, saying so, without them.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from tests.conftest import tiny_trainer_dict
from tests.trainers.models.test_all_models import COMBINATIONS, VOCAB, tiny_config
from trainers.config import DecodeConfig, ModelConfig, TrainerConfig
from trainers.decoding import decode
from trainers.training import run_training
from trainers.metrics import java_available
from trainers.models import ENCODERS, Captioner, Decoder, build_encoder

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

_SCORING_MISSING = [name for name, here in (("pycocoevalcap", importlib.util.find_spec("pycocoevalcap") is not None),
                                            ("Java", java_available())) if not here]
# Only where CUDA is: without it the module's own skip says why (the closest skipif's reason is the one shown).
scores_captions = pytest.mark.skipif(
    torch.cuda.is_available() and bool(_SCORING_MISSING),
    reason=f"scores captions: needs pycocoevalcap and Java ({', '.join(_SCORING_MISSING)} missing here)")


@pytest.fixture(scope="module")
def gpu_encoders():
    """Each encoder is built once on the GPU, channels_last as the recipe runs it, and freed after the module."""
    built = {}

    def get(name):
        if name not in built:
            built.clear()  # one at a time: the VGGs are large
            built[name] = build_encoder(tiny_config(encoder=name)).cuda().to(memory_format=torch.channels_last)
        return built[name]

    yield get
    built.clear()
    torch.cuda.empty_cache()


@pytest.mark.parametrize("decoder,attention", COMBINATIONS)
@pytest.mark.parametrize("encoder_name", ENCODERS.names())
def test_forward_and_backward_under_bf16_reach_every_part(gpu_encoders, encoder_name, decoder, attention):
    torch.manual_seed(0)
    encoder = gpu_encoders(encoder_name)
    encoder.zero_grad(set_to_none=True)
    model = Captioner(encoder, Decoder(tiny_config(encoder_name, decoder, attention), encoder.out_channels,
                                       VOCAB).cuda()).train()
    images = torch.rand(2, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    captions = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]], device="cuda")
    lengths = torch.tensor([5, 3], device="cuda")

    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, alphas = model(images, captions, lengths, ss_rate=0.5)
        loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), captions[:, 1:], ignore_index=0)
    loss.backward()

    assert logits.shape == (2, 4, VOCAB) and alphas.shape == (2, 4, 4)
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.decoder.parameters())
    first_conv = next(m for m in encoder.blocks[0].modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_beam_search_on_the_gpu_gives_the_cpu_captions():
    """Same weights, same features, float32 both sides: the captions agree except where two
    candidates tie within float rounding (then either may win), which must stay rare."""
    torch.manual_seed(0)
    cfg = ModelConfig(decoder="lstm", attention="soft", embed_dim=64, hidden_dim=64, attention_dim=64)
    decoder = Decoder(cfg, feature_dim=128, vocab_size=50).eval()
    features = torch.randn(64, 49, 128)  # (B, P, C)
    settings = DecodeConfig(strategy="beam", beam_size=3, max_len=20, length_penalty=0.5)
    on_cpu = decode(decoder, features, settings)
    on_gpu = decode(decoder.cuda(), features.cuda(), settings)
    differing = [i for i, (a, b) in enumerate(zip(on_cpu, on_gpu)) if a.tokens != b.tokens]
    for i in differing:  # a tie: both captions score the same within rounding
        assert on_cpu[i].score == pytest.approx(on_gpu[i].score, abs=1e-3)
    assert len(differing) <= 2
    assert all(a.score == pytest.approx(b.score, abs=1e-3) for a, b in zip(on_cpu, on_gpu))


@pytest.mark.parametrize("where", ["device", "host", "mapped"])
def test_a_feature_store_on_the_gpu_holds_its_split_where_it_says_and_gives_each_row_its_features(tmp_path, where):
    """The GPU placements: on the GPU (one gather there), in pinned host memory (gathered into a pinned
    buffer, then copied), or memory-mapped (the loader's rows copied over), all giving the same batch."""
    import numpy as np

    from trainers.features import FeatureStore

    features = np.random.default_rng(0).standard_normal((600, 4, 3)).astype(np.float16)  # (N, P, C)
    np.save(tmp_path / "train.npy", features)
    store = FeatureStore(tmp_path / "train.npy", torch.device("cuda"), where=where)
    if where == "mapped":
        assert store.held is None
    else:
        assert (store.held.device.type, store.held.is_pinned()) == {"device": ("cuda", False), "host": ("cpu", True)}[where]
    rows = torch.tensor([599, 256, 0, 511, 512])
    inputs = torch.from_numpy(features[rows.numpy()])  # what the loader collates when mapped
    batch = store.batch(inputs, rows)
    assert batch.device.type == "cuda" and torch.equal(batch.cpu(), inputs)
    assert FeatureStore(tmp_path / "train.npy", torch.device("cuda")).where == "device"  # 14 kB on an idle GPU


def test_features_cached_on_the_gpu_are_those_cached_on_the_cpu(prepared_dir, tmp_path):
    """The GPU writer (pinned copies, written while the next batch encodes) stores every batch's rows."""
    import numpy as np

    from tests.trainers.test_features import Linear
    from trainers.data.prepared import PreparedDataset
    from trainers.features import cached_features

    dataset = PreparedDataset(prepared_dir)
    common = dict(encoder_name="linear", image_size=32, encoded_size=2, batch_size=5)
    on_cpu = cached_features(dataset, Linear(), **common, cache_dir=tmp_path / "cpu", device=torch.device("cpu"))
    on_gpu = cached_features(dataset, Linear().cuda(), **common, cache_dir=tmp_path / "gpu", device=torch.device("cuda"))
    for split in ("train", "val", "test"):
        assert np.allclose(np.load(on_gpu[split]), np.load(on_cpu[split]), atol=1e-3)


@scores_captions
@pytest.mark.parametrize("compile_step", [False, True])
def test_a_run_trains_on_the_gpu_in_bf16_by_default(prepared_dir, tmp_path, compile_step):
    config = TrainerConfig.model_validate(tiny_trainer_dict(prepared_dir, train={"epochs": 1, "compile": compile_step}))
    assert config.train.amp == "auto"
    result = run_training(config, tmp_path)
    assert math.isfinite(result.metrics["train_loss"]) and "test_CIDEr" in result.metrics

