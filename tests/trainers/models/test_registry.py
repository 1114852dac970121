import pytest

from trainers.errors import InputError
from trainers.models import ATTENTIONS, DECODERS, ENCODERS
from trainers.models.registry import Registry


@pytest.mark.parametrize("registry,typo,meant", [
    (ENCODERS, "vgg_16", "vgg16"),
    (ENCODERS, "ResNet-101", "resnet101"),
    (DECODERS, "lstn", "lstm"),
    (ATTENTIONS, "sotf", "soft"),
])
def test_unknown_names_say_which_key_and_what_was_meant(registry, typo, meant):
    with pytest.raises(InputError) as error:
        registry.get(typo)
    message = str(error.value)
    assert message.startswith(f"{registry.key}: unknown {registry.kind} {typo!r}")
    assert f"did you mean {meant}" in message


def test_a_name_far_from_all_lists_every_valid_one():
    with pytest.raises(InputError, match=r"unknown attention 'transformer' \(registered attentions: dot, mean, soft\)"):
        ATTENTIONS.get("transformer")


def test_registering_by_decorator_under_several_names():
    registry = Registry("widget", "model.widget")

    @registry.register("small", "large")
    def build():
        return "widget"

    assert registry.names() == ["large", "small"]
    assert registry.get("small") is registry.get("large") is build
    with pytest.raises(ValueError, match="'small' is registered twice"):
        registry.register("small")(build)
