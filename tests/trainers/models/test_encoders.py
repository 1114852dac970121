import pytest
import torch
import torchvision
from safetensors.torch import save_file

from trainers.config import ModelConfig
from trainers.errors import InputError
from trainers.models import Captioner, Decoder, build_captioner, build_encoder, encoder_fingerprint


def config(**overrides) -> ModelConfig:
    values = dict(encoder="resnet18", weights="none", fine_tune=False, encoded_size=2)
    return ModelConfig(**(values | overrides))


@pytest.mark.parametrize("name,channels", [("resnet101", 2048), ("vgg16", 512)])
def test_show_attend_tell_grid_shapes(name, channels):
    encoder = build_encoder(config(encoder=name, encoded_size=14)).eval()
    assert encoder.out_channels == channels
    assert encoder(torch.rand(1, 3, 224, 224)).shape == (1, 196, channels)


def test_frozen_encoder_has_no_gradients_and_keeps_its_batchnorm_statistics():
    model = build_captioner(config(fine_tune=False, embed_dim=8, hidden_dim=8, attention_dim=8), vocab_size=9)
    model.train()
    statistics = model.encoder.blocks[0][1].running_mean.clone()  # the stem's BatchNorm
    logits, _ = model(torch.rand(2, 3, 32, 32), torch.tensor([[1, 4, 2], [1, 5, 2]]), torch.tensor([3, 3]))
    logits.sum().backward()

    assert all(not block.training for block in model.encoder.blocks)
    assert torch.equal(model.encoder.blocks[0][1].running_mean, statistics)
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert len(model.param_groups(lr=1e-3, encoder_lr=1e-4)) == 1


def test_fine_tuning_the_last_blocks_trains_only_those_at_encoder_lr():
    model = build_captioner(config(fine_tune=2, embed_dim=8, hidden_dim=8, attention_dim=8), vocab_size=9)
    model.train()
    logits, _ = model(torch.rand(2, 3, 32, 32), torch.tensor([[1, 4, 2], [1, 5, 2]]), torch.tensor([3, 3]))
    logits.sum().backward()

    trains = [block.training for block in model.encoder.blocks]
    has_grad = [any(p.grad is not None for p in block.parameters()) for block in model.encoder.blocks]
    assert trains == has_grad == [False, False, False, True, True]  # resnet: stem, layer1..4
    decoder_group, encoder_group = model.param_groups(lr=1e-3, encoder_lr=1e-4)
    assert encoder_group["lr"] == 1e-4 and decoder_group["lr"] == 1e-3
    assert {id(p) for p in encoder_group["params"]} == {
        id(p) for block in model.encoder.blocks[3:] for p in block.parameters()}


def test_more_blocks_than_the_encoder_has_is_an_input_error():
    with pytest.raises(InputError, match=r"model.fine_tune: 9 .* 'resnet18' has 5"):
        build_encoder(config(fine_tune=9))


def test_unknown_encoder_names_the_key_and_close_matches():
    # The config refuses the name when it is loaded; a config built without validation meets the registry.
    unchecked = ModelConfig.model_construct(**(config().model_dump() | {"encoder": "resnet110"}))
    with pytest.raises(InputError, match=r"model.encoder: unknown encoder 'resnet110'.*did you mean.*resnet101"):
        build_encoder(unchecked)


def test_random_initialisation_is_the_same_on_every_build():
    """`weights: none` features can be cached: the random trunk does not depend on the global seed."""
    images = torch.rand(1, 3, 32, 32)
    torch.manual_seed(1)
    first = build_encoder(config()).eval()(images)
    torch.manual_seed(2)
    assert torch.equal(build_encoder(config()).eval()(images), first)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_a_frozen_random_resnet_gives_features_float16_can_cache(name):
    """Eval-mode batch norms on their initial statistics normalise nothing: with the default init a
    random ResNet-101's features reach 3e5, past float16's 65504 (the feature cache)."""
    encoder = build_encoder(ModelConfig(encoder=name, weights="none", fine_tune=False, encoded_size=2)).eval()
    with torch.no_grad():
        features = encoder(torch.rand(2, 3, 64, 64))  # (B, P, C)
    assert features.abs().max() < 65504 / 10  # a tenth of float16's range: room for brighter images


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_from_a_local_file_round_trip(tmp_path, suffix):
    torch.manual_seed(3)
    source = torchvision.models.resnet18()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pt":
        torch.save(source.state_dict(), path)
    else:
        save_file(source.state_dict(), path)

    encoder = build_encoder(config(weights=str(path)))

    assert torch.equal(encoder.blocks[0][0].weight, source.conv1.weight)
    assert torch.equal(encoder.blocks[4][1].conv2.weight, source.layer4[1].conv2.weight)
    assert not torch.equal(encoder.blocks[0][0].weight, build_encoder(config()).blocks[0][0].weight)


def test_weights_for_another_architecture_are_an_input_error(tmp_path):
    path = tmp_path / "vgg11.pt"
    torch.save(torchvision.models.mobilenet_v3_large().state_dict(), path)
    with pytest.raises(InputError, match=r"model.weights: .*vgg11.pt is not a torchvision resnet18 state dict"):
        build_encoder(config(weights=str(path)))


def test_missing_or_unsafe_weights_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="model.weights: 'nowhere.pt' is not imagenet, none, or an existing file"):
        build_encoder(config(weights="nowhere.pt"))
    pickled = tmp_path / "module.pt"
    torch.save(torchvision.models.resnet18(), pickled)  # a whole module: refused by weights_only loading
    with pytest.raises(InputError, match="cannot read .*module.pt as a state dict"):
        build_encoder(config(weights=str(pickled)))


def test_imagenet_download_failure_says_how_to_fix_it(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")  # what torch.hub raises without internet

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    expected = (r"imagenet weights for 'resnet18' \(ResNet18_Weights.IMAGENET1K_V1\) could not be downloaded from "
                r"https://download.pytorch.org/models/resnet18-.*network unreachable.*weights: none")
    with pytest.raises(InputError, match=expected):
        build_encoder(config(weights="imagenet"))


def test_fingerprint_changes_with_what_changes_the_features(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(1)}, path)
    fingerprint = encoder_fingerprint(config(weights=str(path)))
    assert fingerprint["weights"].startswith("sha256:")
    torch.save({"a": torch.ones(1)}, path)
    assert encoder_fingerprint(config(weights=str(path))) != fingerprint
    assert encoder_fingerprint(config()) == {"encoder": "resnet18", "weights": "none", "encoded_size": 2}
    assert encoder_fingerprint(config(encoded_size=14)) != encoder_fingerprint(config())
    assert encoder_fingerprint(config(fine_tune=True)) == encoder_fingerprint(config())


def test_decoder_only_captioner_trains_on_cached_features():
    model = Captioner.decoder_only(6, config(embed_dim=8, hidden_dim=8, attention_dim=8), vocab_size=9)
    logits, alphas = model.decoder(torch.rand(2, 4, 6), torch.tensor([[1, 4, 2], [1, 5, 2]]), torch.tensor([3, 3]))
    assert model.encoder is None and isinstance(model.decoder, Decoder)
    assert logits.shape == (2, 2, 9) and alphas.shape == (2, 2, 4)
    assert len(model.param_groups(lr=1e-3, encoder_lr=1e-4)) == 1


def _running_statistics(encoder) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("weights,statistics_move", [("file", False), ("none", True)])
def test_a_pretrained_trunk_fine_tunes_with_its_batchnorm_statistics_kept(tmp_path, weights, statistics_move):
    """A captioning batch holds few distinct images: a pretrained trunk keeps its BatchNorm statistics
    (its scale and shift still learn); a trunk trained from scratch must learn them."""
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    encoder = build_encoder(config(weights=str(path) if weights == "file" else "none", fine_tune=True)).train()
    before = _running_statistics(encoder)
    encoder(torch.rand(4, 3, 64, 64)).sum().backward()
    moved = any(not torch.equal(a, b) for a, b in zip(before, _running_statistics(encoder)))
    assert moved == statistics_move
    assert all(p.grad is not None for p in encoder.trainable_parameters())


def test_weights_may_name_a_torchvision_enum():
    from trainers.config import IMAGENET_WEIGHTS, ModelConfig
    from trainers.models.encoders import imagenet_weights

    for name, enums in IMAGENET_WEIGHTS.items():  # the torch-free table says what torchvision has
        assert set(enums) == {w.name for w in torchvision.models.get_model_weights(name)}, name
    assert imagenet_weights(ModelConfig(encoder="resnet101", weights="IMAGENET1K_V1")).name == "IMAGENET1K_V1"
    assert imagenet_weights(ModelConfig(encoder="resnet101", weights="imagenet")).name == "IMAGENET1K_V2"
    with pytest.raises(ValueError, match="encoder 'vgg16' has no torchvision weights 'IMAGENET1K_V2'"):
        ModelConfig(encoder="vgg16", weights="IMAGENET1K_V2")
