"""invkit.teachers.digits and invkit.teachers.heads pinned exactly: the shipped data and
weights, the upscaling against hand-computed values, each network's layers (a golden of their
reprs), their forward passes against independent re-computations, and every head error."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from invkit.specs import TeacherMeta
from invkit.teachers import digits, heads
from tests.expect import invkit_error
from tests.golden import assert_golden


def test_constants():
    assert digits.SIZE == 32 and digits.NUM_CLASSES == 10
    assert digits.CLASS_NAMES == tuple("0123456789")
    assert digits.MEAN == (0.3, 0.3, 0.3) and digits.STD == (0.33, 0.33, 0.33)
    assert digits.SPLITS == ("train", "heldout")
    assert digits.SPLITS_FILE.name == "digits_splits.safetensors"
    assert {k: v.name for k, v in digits.WEIGHTS.items()} == {
        "digits": "digits.safetensors", "digits-verifier": "digits-verifier.safetensors",
        "digits-vit": "digits-vit.safetensors"}
    assert digits.BATCHNORM == {"digits": True, "digits-verifier": False, "digits-vit": False}
    assert digits.BUILDERS == {"digits": digits.DigitsResNet,
                               "digits-verifier": digits.DigitsCNN,
                               "digits-vit": digits.DigitsViT}


def test_upscale_values_by_hand():
    """Values /16, clamped to [0, 1], bilinear without aligned corners, grey to 3 channels."""
    image = torch.zeros(1, 8, 8, dtype=torch.uint8)
    image[0, :, 0] = 16
    out = digits.upscale(image, size=16)
    assert out.shape == (1, 3, 16, 16) and out.dtype == torch.float32 and out.is_contiguous()
    row = out[0, 1, 3, :4].tolist()
    assert row == [1.0, 0.75, 0.25, 0.0]
    assert torch.equal(out[0, 0], out[0, 2])
    same = digits.upscale(torch.arange(64).reshape(8, 8) % 17)
    assert same.shape == (1, 3, 32, 32)
    ident = digits.upscale(torch.tensor([[[4, 32] * 4] * 8, [[-16, 8] * 4] * 8]), size=8)
    assert ident[0, 0, 0, :2].tolist() == [0.25, 1.0]
    assert ident[1, 2, 0, :2].tolist() == [0.0, 0.5]
    assert digits.upscale(torch.full((2, 8, 8), 16, dtype=torch.uint8)).eq(1.0).all()


def test_missing_splits_file(tmp_path, monkeypatch):
    missing = tmp_path / "gone.safetensors"
    monkeypatch.setattr(digits, "SPLITS_FILE", missing)
    digits._splits.cache_clear()
    try:
        assert invkit_error(digits.digits_raw, "train") == (
            f"the digits data file is missing from the installation: {missing} (reinstall "
            "invkit, or run scripts/train_digits.py in a checkout)")
    finally:
        digits._splits.cache_clear()


def test_splits():
    assert invkit_error(digits.digits_raw, "test") == (
        "unknown digits split 'test' (valid: train, heldout)")
    images8, labels = digits.digits_raw("train")
    assert images8.shape == (1347, 8, 8) and images8.dtype == torch.uint8
    assert labels.shape == (1347,) and int(images8.max()) == 16
    images01, labels = digits.digits_dataset()
    assert images01.shape == (450, 3, 32, 32) and labels.dtype == torch.int64
    assert labels[:5].tolist() == [1, 4, 8, 6, 5]
    raw, _ = digits.digits_raw("heldout")
    assert torch.equal(images01[:3], digits.upscale(raw[:3]))
    assert digits.digits_dataset("train")[0].shape == (1347, 3, 32, 32)


def test_network_layers_golden():
    """Every constructor argument of the three networks (kernels, strides, widths, dropout)."""
    text = "\n".join(repr(builder()) for builder in digits.BUILDERS.values())
    text += "\n" + repr(digits.BasicBlock(8, 8)) + "\n" + repr(digits.BasicBlock(8, 8, 2))
    text += "\n" + repr(digits.DigitsResNet(widths=(4, 8), num_classes=3))
    text += "\n" + repr(digits.DigitsViT(dim=8, depth=1, heads=2, patch=4, num_classes=3,
                                         size=8)) + "\n"
    assert_golden("teachers-digits-networks", text)


def test_parameter_counts_and_shapes():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(digits.DigitsResNet()) == 78330
    assert count(digits.DigitsCNN()) == 188810
    assert count(digits.DigitsViT()) == 148042
    vit = digits.DigitsViT(patch=4, size=16)
    assert vit.pos_embed.shape == (1, 16, 64)
    big = digits.DigitsViT(dim=256)
    assert 0.015 < float(big.pos_embed.detach().std()) < 0.025
    assert digits.BasicBlock(4, 4).downsample is None
    assert digits.BasicBlock(4, 8).downsample is not None
    assert digits.BasicBlock(4, 4, stride=2).downsample is not None
    assert digits.ViTBlock(8, 2).heads == 2


def _randomise(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return module.eval()


def _bn(m, x):
    return ((x - m.running_mean[None, :, None, None])
            / torch.sqrt(m.running_var[None, :, None, None] + m.eps)
            * m.weight[None, :, None, None] + m.bias[None, :, None, None])


def _block(b, x):
    out = torch.relu(_bn(b.bn1, F.conv2d(x, b.conv1.weight, stride=b.conv1.stride, padding=1)))
    out = _bn(b.bn2, F.conv2d(out, b.conv2.weight, padding=1))
    if b.downsample is not None:
        x = _bn(b.downsample[1], F.conv2d(x, b.downsample[0].weight,
                                          stride=b.downsample[0].stride))
    return torch.relu(out + x)


def test_resnet_forward_by_hand():
    net = _randomise(digits.DigitsResNet())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    h = torch.relu(_bn(net.bn1, F.conv2d(x, net.conv1.weight, padding=1)))
    for block in net.layers:
        h = _block(block, h)
    assert h.shape == (2, 64, 4, 4)
    expected = h.mean(dim=(2, 3)) @ net.fc.weight.T + net.fc.bias
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-4)
        block = _randomise(digits.BasicBlock(3, 3))
        torch.testing.assert_close(block(x), _block(block, x), rtol=1e-4, atol=1e-4)


def test_vit_forward_by_hand():
    net = _randomise(digits.DigitsViT(dim=16, depth=2, heads=2))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    def norm(m, t):
        return F.layer_norm(t, (t.shape[-1],), m.weight, m.bias, m.eps)

    t = F.conv2d(x, net.patch_embed.weight, net.patch_embed.bias, stride=8)
    t = t.flatten(2).transpose(1, 2) + net.pos_embed
    for blk in net.blocks:
        n, tokens, dim = t.shape
        q, k, v = (blk.qkv(norm(blk.norm1, t))).split(dim, dim=-1)

        def heads_of(z):
            return z.reshape(n, tokens, 2, dim // 2).transpose(1, 2)

        q, k, v = heads_of(q), heads_of(k), heads_of(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // 2), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(n, tokens, dim)
        t = t + blk.proj(attended)
        h = norm(blk.norm2, t)
        t = t + blk.mlp[2](F.gelu(blk.mlp[0](h)))
    expected = net.head(norm(net.norm, t.mean(dim=1)))
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-4)


def test_cnn_forward_by_hand():
    net = _randomise(digits.DigitsCNN())
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    h = x
    for i in (0, 3, 6):
        conv = net.features[i]
        h = F.max_pool2d(torch.relu(F.conv2d(h, conv.weight, conv.bias, padding=1)), 2)
    h = torch.relu(net.classifier[1](h.flatten(1)))
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.classifier[4](h), rtol=1e-4, atol=1e-4)


def test_digits_meta_and_specs():
    assert digits.digits_meta("digits-vit", "w") == TeacherMeta(
        arch="digits-vit", input_size=32, num_classes=10, mean=(0.3, 0.3, 0.3),
        std=(0.33, 0.33, 0.33), class_names=tuple("0123456789"), weights="w", grayscale=True,
        family="digits")
    specs = list(digits.teacher_specs())
    assert [(s.name, s.summary, s.source, s.input_size, s.num_classes, s.default_weights,
             s.grayscale, s.family, s.batchnorm) for s in specs] == [
        ("digits", "small BatchNorm ResNet on scikit-learn's digits (32 px, bundled; the "
                   "offline default teacher)", "bundled", 32, 10, "bundled", True, "digits",
         True),
        ("digits-verifier", "plain CNN (no BatchNorm) on scikit-learn's digits (32 px, "
                            "bundled; the digits verifier)", "bundled", 32, 10, "bundled",
         True, "digits", False),
        ("digits-vit", "small vision transformer (LayerNorm, no BatchNorm) on scikit-learn's "
                       "digits (32 px, bundled; for BatchNorm-free methods)", "bundled", 32, 10,
         "bundled", True, "digits", False)]
    assert [(s.factory.func, s.factory.args) for s in specs] == [
        (digits.build, (name,)) for name in ("digits", "digits-verifier", "digits-vit")]


@pytest.mark.parametrize("name", ["digits", "digits-verifier", "digits-vit"])
def test_build_loads_the_shipped_weights(name):
    from safetensors.torch import load_file

    shipped = load_file(str(digits.WEIGHTS[name]))
    for weights in (None, "bundled"):
        teacher = digits.build(name, weights)
        state = teacher.module.state_dict()
        assert state.keys() == shipped.keys()
        assert all(torch.equal(state[k], shipped[k]) for k in state)
        assert teacher.meta == digits.digits_meta(name, "bundled")
        assert teacher.name == name and not teacher.module.training
    random = digits.build(name, "none")
    assert random.meta.weights == "none" and not random.module.training


def test_build_errors(tmp_path, monkeypatch):
    assert invkit_error(digits.build, "digits", "DEFAULT") == (
        "digits accepts --weights none or a weights file, not 'DEFAULT'")
    monkeypatch.setitem(digits.WEIGHTS, "digits", tmp_path / "no.safetensors")
    assert invkit_error(digits.build, "digits") == (
        f"the bundled digits weights are missing: {tmp_path / 'no.safetensors'} (reinstall "
        "invkit, or run scripts/train_digits.py in a checkout)")


def test_bundled_file_of_another_network_names_the_file(monkeypatch):
    other = digits.WEIGHTS["digits-verifier"]
    monkeypatch.setitem(digits.WEIGHTS, "digits", other)
    message = invkit_error(digits.build, "digits")
    assert message.startswith(f"weights {other} do not fit digits: ")


def test_bundled_teacher_classifies_heldout_digits():
    images01, labels = digits.digits_dataset("heldout")
    teacher = digits.build("digits")
    with torch.no_grad():
        predicted = teacher.module(teacher.normalize(images01[:64])).argmax(1)
    assert (predicted == labels[:64]).float().mean() > 0.9


# ---------------------------------------------------------------- heads


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(4, 6))
        self.classifier = nn.Sequential(nn.ReLU(), nn.Linear(6, 3, bias=False))


def test_find_head():
    net = TwoHeads()
    assert heads.find_head(net) == ("classifier.1", net.classifier[1])
    assert heads.find_head(net, num_classes=3)[0] == "classifier.1"
    assert heads.find_head(net, name="body.1") == ("body.1", net.body[1])
    assert heads.find_head(net, num_classes=6, name="body.1")[0] == "body.1"
    assert invkit_error(heads.find_head, net, name="fc") == (
        "the network has no layer named 'fc' (give the dotted name of its final nn.Linear, "
        "e.g. 'fc')")
    assert invkit_error(heads.find_head, net, name="classifier.0") == (
        "layer 'classifier.0' is a ReLU, not an nn.Linear: only a linear classification head "
        "can be found and resized")
    assert invkit_error(heads.find_head, nn.Sequential(nn.Conv2d(1, 1, 1))) == (
        "cannot find the classification head of this Sequential: it has no nn.Linear layer "
        "(only a network ending in a linear classifier can be extended)")
    assert invkit_error(heads.find_head, net, num_classes=10) == (
        "cannot find the classification head: layer 'classifier.1' has 3 outputs but the "
        "network has 10 classes (name the head layer explicitly, e.g. --head fc)")
    assert invkit_error(heads.find_head, net, 3, "body.1") == (
        "cannot find the classification head: layer 'body.1' has 6 outputs but the network "
        "has 3 classes (name the head layer explicitly, e.g. --head fc)")


def test_set_submodule():
    net = TwoHeads()
    new = nn.Linear(6, 5)
    heads.set_submodule(net, "classifier.1", new)
    assert net.classifier[1] is new
    top = nn.Identity()
    heads.set_submodule(net, "body", top)
    assert net.body is top


def test_widen_linear():
    old = nn.Linear(4, 3).to(torch.float64)
    old.weight.requires_grad_(False)
    wide = heads.widen_linear(old, 5)
    assert (wide.in_features, wide.out_features) == (4, 5)
    assert wide.weight.dtype == torch.float64 and wide.weight.requires_grad is False
    assert torch.equal(wide.weight[:3], old.weight) and torch.equal(wide.bias[:3], old.bias)
    same = heads.widen_linear(nn.Linear(2, 2, bias=False), 2)
    assert same.bias is None and same.out_features == 2 and same.weight.requires_grad
    assert invkit_error(heads.widen_linear, old, 2) == "cannot widen a head of 3 outputs to 2"


def test_resize_head():
    net = TwoHeads()
    kept = net.classifier[1]
    assert heads.resize_head(net, 3) == "classifier.1" and net.classifier[1] is kept
    assert heads.resize_head(net, 7) == "classifier.1"
    head = net.classifier[1]
    assert (head.in_features, head.out_features, head.bias) == (6, 7, None)
    net = TwoHeads().to(torch.float64)
    assert heads.resize_head(net, 2, name="body.1") == "body.1"
    assert net.body[1].out_features == 2 and net.body[1].bias is not None
    assert net.body[1].weight.dtype == torch.float64
    assert heads.__all__ == ["find_head", "set_submodule", "widen_linear", "resize_head"]
