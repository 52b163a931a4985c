"""The model registry: every architecture at any channel count, hint shapes for every pair of
taps through the FitNets regressor, multi-exit students, and ``kdtune models``."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

from kdtune.cli import main
from kdtune.losses import HintRegressor
from kdtune.models import ARCHS, arch_taps, build_model
from kdtune.models.taps import MultiExit, count_flops, count_parameters, model_taps

# small inputs keep the ResNet-50 forward cheap; 16 px still leaves layer4 a 2x2 map
IMAGE_SIZE, CHANNELS, CLASSES = 16, 3, 10


@pytest.fixture(scope="module")
def tap_shapes() -> dict[tuple[str, str], torch.Size]:
    """(arch, tap) -> feature shape of a 2-image batch, one forward per architecture."""
    torch.manual_seed(0)
    x = torch.randn(2, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    shapes = {}
    for arch in ARCHS:
        model = build_model(arch, CHANNELS, CLASSES, IMAGE_SIZE).eval()
        taps = model_taps(model, arch)
        assert taps == arch_taps(arch)
        extractor = create_feature_extractor(model, return_nodes={t: t for t in taps})
        with torch.no_grad():
            out = extractor(x)
        shapes.update({(arch, tap): out[tap].shape for tap in taps})
    return shapes


def test_every_teacher_student_tap_pair_regresses_to_the_teacher_shape(tap_shapes):
    pairs = [(t, s) for t, s in itertools.product(tap_shapes, repeat=2)]
    assert len(pairs) == sum(len(arch_taps(a)) for a in ARCHS) ** 2
    # the regressor sees shapes only: each (student shape, teacher shape) once stands for every
    # pair that has it (1,225 pairs, 225 shapes here; on torch 2.14 a meta-device forward runs
    # Python decompositions, ~40 ms each)
    by_shapes = {(tuple(tap_shapes[s]), tuple(tap_shapes[t])): (t, s) for t, s in pairs}
    # on the meta device the regressor's ops compute shapes without allocating or initialising
    # 2048x2048 convolutions
    with torch.no_grad(), torch.device("meta"):
        for (s_shape, t_shape), ((t_arch, t_tap), (s_arch, s_tap)) in by_shapes.items():
            regressor = HintRegressor(s_shape[1], t_shape[1]).eval()
            out = regressor(torch.empty(s_shape), t_shape[-2:])
            assert out.shape == t_shape, (t_arch, t_tap, s_arch, s_tap)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("channels,size", [(1, 8), (4, 12)])
def test_any_channel_count_and_small_images(arch, channels, size):
    model = build_model(arch, channels, 7, size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_large_images_keep_the_imagenet_stem_with_any_channels():
    model = build_model("resnet18", 1, 5, 40).eval()
    assert model.conv1.kernel_size == (7, 7) and model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 40, 40)).shape == (1, 5)


def test_cifar_resnet_sizes_match_he_et_al():
    # ResNet-20 has 0.27M parameters in He et al. 2016, table 6; ResNet-8 has one block a stage
    assert 0.26e6 < count_parameters(build_model("resnet20", 3, 10, 32)) < 0.28e6
    resnet8 = build_model("resnet8", 3, 10, 32)
    assert [len(getattr(resnet8, f"layer{i}")) for i in (1, 2, 3)] == [1, 1, 1]
    wide = build_model("resnet8", 3, 10, 32, {"widths": [32, 64, 128]})
    assert wide.fc.in_features == 128


def test_flops_count_convolutions_by_hand():
    # small_cnn widths [4] on 1x8x8: one stage needs two convs for its receptive field to
    # cover 6 of 8 pixels: conv 1->4 3x3 on 8x8 = 4*9*64 MACs, conv 4->4 = 16*9*64, fc 40
    model = build_model("small_cnn", 1, 10, 8, {"widths": [4]})
    assert count_flops(model, 1, 8) == 2 * (4 * 9 * 64 + 16 * 9 * 64 + 40)


def test_multi_exit_student_has_one_exit_per_stage():
    model = build_model("resnet8", 1, 10, 8)
    multi = MultiExit(model, "resnet8", 10, torch.randn(2, 1, 8, 8))
    exits = multi(torch.randn(3, 1, 8, 8))
    assert [e.shape for e in exits] == [(3, 10)] * 3
    # the deepest exit is the model's own classifier
    model.eval()
    multi.eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(multi(x)[-1], model(x))


def test_models_command_lists_params_and_flops(capsys):
    assert main(["models", "--image-size", "8", "--channels", "1"]) == 0
    out = capsys.readouterr().out
    assert "1x8x8" in out
    for arch in ARCHS:
        assert f"\n{arch} " in out
    assert "layer1, layer2, layer3" in out
    assert main(["models", "--channels", "0"]) == 2


@pytest.mark.parametrize("size", [8, 28, 32])
def test_every_model_builds_and_taps_at_8_28_and_32_px(size):
    from torchvision.models.feature_extraction import create_feature_extractor

    x = torch.randn(2, 1, size, size)
    for arch in ARCHS:
        model = build_model(arch, 1, 10, size).eval()
        taps = model_taps(model, arch)
        assert taps == arch_taps(arch)  # the spec's view of the taps is the model's
        with torch.no_grad():
            out = create_feature_extractor(model, {t: t for t in taps} | {"fc": "logits"})(x)
        assert out["logits"].shape == (2, 10), arch
        assert all(out[t].ndim == 4 and out[t].shape[-1] >= 1 for t in taps), arch


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("size", [8, 16, 28, 32])
def test_a_small_cnn_s_last_stage_sees_most_of_the_image(size, stages):
    """The receptive field, measured: which input pixels move one output of the last stage (on
    a copy with average pools and no ReLU, so that the gradient reaches every pixel the
    geometry connects; a max-pool would route it to one pixel of four). A single stage is
    capped at four convolutions and sees 10 px."""
    import copy

    from torch import nn

    model = copy.deepcopy(build_model("small_cnn", 1, 10, size, {"widths": [4] * stages}))
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(module, child_name, nn.AvgPool2d(2))
            elif isinstance(child, nn.ReLU):
                setattr(module, child_name, nn.Identity())
    model.eval()
    x = torch.randn(1, 1, size, size, requires_grad=True)
    feature = x
    for i in range(1, stages + 1):
        feature = getattr(model, f"stage{i}")(feature)
    h, w = feature.shape[-2:]
    feature[0, :, h // 2, w // 2].sum().backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero()
    seen = int(rows.max() - rows.min()) + 1
    assert seen >= 0.75 * size, (size, stages, seen)


@pytest.fixture(scope="module")
def fashion_subset():
    """Fashion-MNIST from Debian's dataset-fashion-mnist (what .ci/run installs)."""
    from kdtune.data import DEBIAN_FASHION_MNIST, DatasetUnavailable, load_splits

    try:
        return load_splits("fashion_mnist", fractions=(0.94, 0.03, 0.03), max_train=1200,
                           split_seed=1)
    except DatasetUnavailable:
        pytest.skip(f"no Fashion-MNIST in {DEBIAN_FASHION_MNIST} "
                    "(apt-get install dataset-fashion-mnist)")


@pytest.mark.parametrize("arch,options", [("small_cnn", {"widths": [16, 32]}),
                                          ("resnet8", {}),
                                          ("vgg11", {"widths": [16, 32, 64, 64, 64]})])
@pytest.mark.parametrize("size", [8, 28, 32])
def test_a_short_training_reaches_a_sensible_accuracy(fashion_subset, arch, options, size):
    """Every architecture family learns at each input size the registry serves (8 px:
    digits' size; 28: MNIST's; 32: CIFAR's), on 1,200 Fashion-MNIST images resized; 50 %
    is five times chance, on 500 validation images (+-2.2 points at 50 %: validating on 2,100
    took a third of these tests' time). benchmarks/models_fit.py trains every registered
    model this way."""
    from kdtune.data import Splits
    from kdtune.engine import Budget, train_epochs
    from kdtune.knobs import resize
    from kdtune.trial import build_distiller

    s = fashion_subset
    val_x, val_y = s.val_x[:500], s.val_y[:500]
    splits = Splits(s.name, s.train_x if size == 28 else resize(s.train_x, size), s.train_y,
                    val_x if size == 28 else resize(val_x, size), val_y, s.test_x, s.test_y,
                    s.num_classes, s.mean, s.std)
    torch.manual_seed(0)
    model = build_model(arch, 1, 10, size, options)
    distiller = build_distiller("scratch", model, None, {}, student_arch=arch,
                                example=splits.train_x[:2].float())
    reports = list(train_epochs(distiller, splits, Budget(epochs=6, batch_size=64, lr=0.02,
                                                          weight_decay=5e-4), seed=0))
    assert max(r.val_acc for r in reports[-2:]) > 50, (arch, size,
                                                       [r.val_acc for r in reports])
