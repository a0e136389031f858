"""Teachers say whether they have BatchNorm (spec and module), listings show it and the
source, and BatchNorm-free torchvision networks build and run at small resolution."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from invkit.cli.listing import natural_key
from invkit.errors import InvkitError
from invkit.registry import registry
from invkit.teachers import find_teacher, has_batchnorm, load_teacher, torchvision_models

#: The torchvision networks without BatchNorm (torchvision 0.29: checked by building).
NO_BATCHNORM = {"alexnet", "squeezenet1_0", "squeezenet1_1", "vgg11", "vgg13", "vgg16",
                "vgg19", "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14",
                "swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b",
                "convnext_tiny", "convnext_small", "convnext_base", "convnext_large"}


def test_every_torchvision_teacher_says_whether_it_has_batchnorm():
    teachers = registry("teacher")
    for name in torchvision_models.model_names():
        assert teachers.get(name).batchnorm is (name not in NO_BATCHNORM), name
    assert {r.name for r in teachers if r.batchnorm is None} == set()


@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")
@pytest.mark.parametrize("name", ["alexnet", "vgg11", "vgg11_bn", "vit_b_16", "swin_t",
                                  "convnext_tiny", "squeezenet1_0", "resnet18",
                                  "mobilenet_v3_small", "efficientnet_b0", "maxvit_t",
                                  "shufflenet_v2_x0_5", "densenet121", "googlenet"])
def test_batchnorm_table_matches_the_modules(name):
    # One network per family, built on the meta device (no memory, no initialisation).
    extra = {"image_size": 224} if name.startswith("vit_") else {}
    with torch.device("meta"):
        module = torchvision.models.get_model(name, weights=None, **extra)
    assert has_batchnorm(module) is torchvision_models.batchnorm(name)


def test_regnet_has_batchnorm():
    # RegNet cannot be built on the meta device; the smallest one is built for real.
    assert has_batchnorm(torchvision.models.regnet_x_400mf()) is True
    assert find_teacher("regnet_y_128gf").batchnorm is True


def test_unknown_family_is_unknown_not_guessed():
    assert torchvision_models.batchnorm("fancynet_9000") is None


@pytest.mark.parametrize("name,blocks", [("vgg11", "features"), ("vit_b_16", "encoder")])
def test_batchnorm_free_torchvision_teachers_run_at_32_px(name, blocks):
    teacher = load_teacher(name, weights="none", input_size=32)
    assert teacher.meta.input_size == 32 and teacher.meta.num_classes == 1000
    assert not has_batchnorm(teacher.module) and find_teacher(name).batchnorm is False
    if name.startswith("vit_"):
        # torchvision zero-initialises the ViT head: random-init logits are all 0 and give
        # no gradient. A method's smoke test must give it weights first.
        head = teacher.module.heads.head
        assert not head.weight.any()
        torch.manual_seed(0)
        torch.nn.init.normal_(head.weight, std=0.02)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = teacher.module(teacher.normalize(x))
    assert logits.shape == (2, 1000)
    logits[:, 3].sum().backward()  # inversion needs gradients with respect to the input
    assert x.grad.abs().sum() > 0
    assert hasattr(teacher.module, blocks)


def test_vit_b_16_is_built_for_the_input_size_it_is_given():
    teacher = load_teacher("vit_b_16", weights="none", input_size=32)
    assert teacher.module.image_size == 32
    assert teacher.module.encoder.pos_embedding.shape == (1, 5, 768)  # 2x2 patches + class
    with pytest.raises(InvkitError, match="weights IMAGENET1K_V1 fit 224 px inputs only"):
        load_teacher("vit_b_16", weights="IMAGENET1K_V1", input_size=32)


def test_small_vit_round_trips_through_a_checkpoint(tmp_path):
    from invkit.teachers import save_teacher

    teacher = load_teacher("vit_b_32", weights="none", input_size=64)
    path = save_teacher(teacher, tmp_path / "vit.safetensors")
    again = load_teacher(f"checkpoint:{path}")
    assert again.meta.input_size == 64 and again.module.image_size == 64
    a, b = teacher.module.state_dict(), again.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_teachers_that_cannot_change_size_refuse():
    with pytest.raises(InvkitError, match="teacher 'digits' cannot be built for another input "
                                          "size \\(it takes 32 px\\)"):
        load_teacher("digits", input_size=64)
    assert load_teacher("digits", input_size=32).meta.input_size == 32  # its own size is fine


def test_natural_sort():
    names = ["resnet101", "resnet18", "resnet50", "digits-vit", "digits", "vgg11_bn", "vgg11"]
    assert sorted(names, key=natural_key) == ["digits", "digits-vit", "resnet18", "resnet50",
                                              "resnet101", "vgg11", "vgg11_bn"]


def test_teachers_list_shows_source_and_batchnorm_in_natural_order(invoke):
    result = invoke("teachers", "list", "--include", "resnet*", "--include", "vgg1*",
                    "--include", "digits*", "--include", "cifar-resnet18")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    header = next(line for line in lines if "name" in line and "source" in line)
    assert "BN" in header and "provider" not in header
    rows = {line.split()[1]: line.split()[1:] for line in lines
            if line.startswith("│") and line.split()[1] not in ("│",)}
    assert rows["vgg11"][:9] == ["vgg11", "│", "torchvision", "│", "224", "│", "1000", "│",
                                 "no"]
    assert rows["vgg11_bn"][8] == "yes" and rows["resnet50v15"][2] == "nvidia"
    assert rows["digits-vit"][2] == "bundled" and rows["digits-vit"][8] == "no"
    assert rows["cifar-resnet18"][2] == "cifar"
    order = [name for name in rows if name.startswith("resnet")]
    assert order == ["resnet18", "resnet34", "resnet50", "resnet50v15", "resnet101", "resnet152"]


def test_plugin_teachers_show_their_plugin_as_source(register_plugin, invoke):
    from tests.test_listing import Zoo

    register_plugin(Zoo(), "zoo-plugin")
    out = invoke("teachers", "list", "--include", "zoo-alpha").output
    line = next(l for l in out.splitlines() if "zoo-alpha" in l)
    assert line.split()[3] == "zoo-plugin" and line.split()[9] == "?"


def test_teachers_list_json_has_batchnorm(invoke):
    rows = json.loads(invoke("teachers", "list", "--include", "vit_b_16", "--include",
                             "resnet18", "--json").output)
    assert [(r["name"], r["batchnorm"], r["source"]) for r in rows] == [
        ("resnet18", True, "torchvision"), ("vit_b_16", False, "torchvision")]


def test_teachers_show_takes_prefixed_specs(invoke):
    shown = json.loads(invoke("teachers", "show", "torchvision:vgg11", "--json").output)
    assert (shown["name"], shown["batchnorm"], shown["input_size"]) == ("vgg11", False, 224)
    result = invoke("teachers", "show", "checkpoint:x.safetensors")
    assert result.exit_code == 2 and "is a file, not a teacher name" in result.output


def test_listing_the_registry_stays_cheap():
    # The BatchNorm column needs no network to be built: the torchvision specs are made
    # from a static table (80 fnmatch calls), never by constructing a model.
    calls = []
    original = torchvision.models.get_model
    try:
        torchvision.models.get_model = lambda *a, **k: calls.append(a) or original(*a, **k)
        [r.batchnorm for r in registry("teacher")]
    finally:
        torchvision.models.get_model = original
    assert calls == []


def test_teacher_table_fits_80_columns_with_whole_names():
    from rich.console import Console

    from invkit.cli.listing import CAPTIONS, COLUMNS, list_records, make_table

    records = list_records("teacher", (), ())
    out = Console(width=80, record=True, highlight=False, file=open("/dev/null", "w"))
    out.print(make_table("teachers", COLUMNS["teacher"], records, CAPTIONS["teacher"]))
    lines = out.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    names = {line.split("│")[1].strip() for line in lines if line.startswith("│")}
    assert {r.name for r in records} <= names  # no name broken over two lines
    row = next(line for line in lines if line.startswith("│ shufflenet_v2_x0_5 "))
    assert [cell.strip() for cell in row.split("│")[2:6]] == ["torchvision", "224", "1000",
                                                              "yes"]


def test_spec_has_batchnorm_before_loading(tmp_path):
    import invkit
    from invkit.teachers import save_teacher

    specs = [("digits", None), ("digits-vit", None), ("torchvision:vgg11", None),
             (None, "resnet18")]
    assert [invkit.spec_has_batchnorm(*spec) for spec in specs] == [True, False, False, True]
    path = save_teacher(load_teacher("digits-verifier", weights="none"),
                        tmp_path / "v.safetensors")
    assert invkit.spec_has_batchnorm(f"checkpoint:{path}") is False  # arch from the file
    assert invkit.spec_has_batchnorm(f"checkpoint:{path}", arch="digits") is True
    bare = tmp_path / "bare.pt"
    torch.save({"w": torch.zeros(1)}, bare)
    assert invkit.spec_has_batchnorm(f"checkpoint:{bare}") is None
    with pytest.raises(InvkitError, match="weights file not found"):
        invkit.spec_has_batchnorm(f"checkpoint:{tmp_path / 'missing.pt'}")
