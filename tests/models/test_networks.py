"""Networks rebuilt from cards: MONAI's classes, and SegResNet's wider output head."""

from __future__ import annotations

import pytest
import torch

from napari_mrisynth.errors import ModelError
from napari_mrisynth.models.networks import build_network, head_channels, widen_from

SEGRESNET = {"name": "SegResNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 5,
             "init_filters": 8, "norm": ["GROUP", {"num_groups": 8}]}}  # fmt: skip


def test_a_head_replaces_the_output_layer_by_a_wider_one():
    plain = build_network(SEGRESNET)
    wide = build_network({**SEGRESNET, "head": {"channels": 24}})
    assert head_channels(SEGRESNET) == 0 and head_channels({"head": {"channels": 24}}) == 24
    assert plain.conv_final[2].conv.weight.shape == (5, 8, 1, 1, 1)
    assert wide.conv_final[2].weight.shape == (24, 8, 3, 3, 3)
    assert wide.conv_final[4].weight.shape == (5, 24, 1, 1, 1)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert wide.eval()(x).shape == plain.eval()(x).shape == (1, 5, 16, 16, 16)


def test_a_widened_head_starts_from_the_plain_output_layer_with_the_same_outputs():
    torch.manual_seed(0)
    plain = build_network(SEGRESNET)
    with torch.no_grad():  # a trained look: output weights and biases far from their start
        plain.conv_final[2].conv.weight.mul_(5.0)
        plain.conv_final[2].conv.bias.uniform_(-2.0, 2.0)
        plain.conv_final[0].weight.uniform_(0.5, 1.5)
    source = plain.state_dict()
    wide = build_network({**SEGRESNET, "head": {"channels": 16}})
    kept = {k: v for k, v in source.items() if not k.startswith("conv_final.2.")}
    missing = wide.load_state_dict(kept, strict=False).missing_keys
    assert sorted(missing) == ["conv_final.2.bias", "conv_final.2.weight",
                               "conv_final.4.bias", "conv_final.4.weight"]  # fmt: skip
    assert widen_from(wide, source) == ["conv_final.2.conv.weight", "conv_final.2.conv.bias"]
    x = torch.randn(2, 1, 24, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(wide.eval()(x), plain.eval()(x), atol=1e-5, rtol=1e-5)
    # the new channels are open to training: their output weights get gradients
    wide.train()
    wide(x).square().mean().backward()
    assert wide.conv_final[4].weight.grad[:, 8:].abs().sum() > 0


def test_a_head_is_refused_where_it_does_not_fit():
    unet = {"name": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3,
            "channels": [4, 8], "strides": [2]}}  # fmt: skip
    with pytest.raises(ModelError, match="SegResNet, not UNet"):
        build_network({**unet, "head": {"channels": 8}})
    for head in ({"channels": 0}, {"channels": 8, "kernel": 5}):
        with pytest.raises(ModelError, match="channels"):
            build_network({**SEGRESNET, "head": head})
    narrow = build_network({**SEGRESNET, "head": {"channels": 4}})
    with pytest.raises(ModelError, match="cannot start"):
        widen_from(narrow, build_network(SEGRESNET).state_dict())
