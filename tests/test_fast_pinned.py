"""The ``fast`` generator method pinned exactly (group h8): the network's layers and
forward, its safetensors file and every refusal, options resolution, the loop's step
counts and checkpoints, Reptile's update, the mode-seeking and feature-diversity figures.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random

import pytest
import torch
import torch.nn.functional as F

import invkit_plugins.generative as fast_plugin
from invkit.errors import InvkitError
from invkit.methods import Context
from invkit.objective import build_objective, parse_prior
from invkit.specs import TeacherMeta
from invkit_plugins.generative import method as fast_method
from invkit_plugins.generative import options as fast_options
from invkit_plugins.generative.method import (
    BETAS, FastGenerator, _augment, _Counter, _floats, _is_main_process, feature_diversity,
    mode_seeking,
)
from invkit_plugins.generative.network import (
    FORMAT, ConditionalGenerator, GeneratorSpec, file_sha256, latents, load_generator,
    read_spec, save_generator,
)
from invkit_plugins.generative.options import DEFAULTS, FastConfig, FastOptions, configure
from tests.di_tiny import tiny_teacher
from tests.expect import invkit_error

SPEC = GeneratorSpec(z_dim=4, width=8, size=16, channels=3, num_classes=4)


def _net(spec=SPEC, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConditionalGenerator(spec)


# ------------------------------------------------------------------ network


def test_spec_base_is_a_quarter_rounded_up():
    sizes = {32: 8, 30: 8, 29: 8, 28: 7, 1: 1, 4: 1, 5: 2}
    for size, base in sizes.items():
        assert dataclasses.replace(SPEC, size=size).base == base


def test_generator_layers():
    net = _net()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert shapes == {
        "embed.weight": (4, 4), "project.weight": (128, 4), "project.bias": (128,),
        "bn0.weight": (8,), "bn0.bias": (8,), "bn0.running_mean": (8,),
        "bn0.running_var": (8,), "up1.0.weight": (4, 8, 3, 3), "up1.1.weight": (4,),
        "up1.1.bias": (4,), "up1.1.running_mean": (4,), "up1.1.running_var": (4,),
        "up2.0.weight": (2, 4, 3, 3), "up2.1.weight": (2,), "up2.1.bias": (2,),
        "up2.1.running_mean": (2,), "up2.1.running_var": (2,), "out.weight": (3, 2, 3, 3),
        "out.bias": (3,)}
    for conv in (net.up1[0], net.up2[0], net.out):
        assert conv.padding == (1, 1)
    assert net.up1[2].negative_slope == 0.2 and net.up2[2].negative_slope == 0.2
    assert net.spec is SPEC


@pytest.mark.parametrize("size", [16, 14])
def test_generator_forward_hand_computed(size):
    spec = dataclasses.replace(SPEC, size=size)
    net = _net(spec).eval()
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(3, 4, generator=g), torch.tensor([0, 3, 1])
    b = spec.base
    h = net.project(z * net.embed.weight[y]).view(3, 8, b, b)
    h = F.interpolate(net.bn0(h), scale_factor=2, mode="nearest")
    h = net.up1(h)
    h = net.up2(F.interpolate(h, scale_factor=2, mode="nearest"))
    if size % 4:
        h = F.interpolate(h, size=(size, size), mode="bilinear", align_corners=False)
    want = torch.sigmoid(net.out(h))
    out = net(z, y)
    assert out.shape == (3, 3, size, size)
    assert torch.allclose(out, want, atol=1e-6)


def test_latents_are_seeded_cpu_normals():
    assert torch.equal(latents(3, 5, 7),
                       torch.randn(3, 5, generator=torch.Generator().manual_seed(7)))
    assert latents(2, 4, 1).shape == (2, 4)


def test_save_read_load_round_trip(tmp_path):
    from safetensors import safe_open

    net = _net()
    path = save_generator(net, tmp_path / "sub" / "g.safetensors", teacher="tiny",
                          extra={"a": 1})
    assert path == tmp_path / "sub" / "g.safetensors"
    spec, metadata = read_spec(path)
    assert spec == SPEC
    assert metadata == {"format": "invkit-generator/1", "teacher": "tiny",
                        "spec": json.dumps(dataclasses.asdict(SPEC)), "info": '{"a": 1}'}
    assert FORMAT == "invkit-generator/1"
    save_generator(net, tmp_path / "plain.safetensors", teacher="t")
    assert read_spec(tmp_path / "plain.safetensors")[1]["info"] == "{}"
    loaded = load_generator(str(path))
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(net.state_dict())
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_sha256_reads_in_chunks(tmp_path):
    path = tmp_path / "big"
    data = bytes(range(256)) * 9000   # > 1 MiB: several chunks
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def test_read_spec_refusals_exact(tmp_path):
    from safetensors.torch import save_file

    missing = tmp_path / "nope.safetensors"
    assert invkit_error(read_spec, missing) == f"--generator {missing}: no such file"
    (tmp_path / "d").mkdir()
    assert invkit_error(read_spec, tmp_path / "d") == f"--generator {tmp_path / 'd'}: no such file"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 4)
    assert invkit_error(read_spec, junk).startswith(f"--generator {junk}: not a safetensors file (")
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other), metadata={"format": "pt"})
    assert invkit_error(read_spec, other) == (
        f"--generator {other}: not an invkit generator (metadata format 'pt', expected "
        f"'invkit-generator/1')")
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    assert invkit_error(read_spec, bare) == (
        f"--generator {bare}: not an invkit generator (metadata format None, expected "
        f"'invkit-generator/1')")
    for spec, why in (("{}", "TypeError"), ("[", "ValueError"), (None, "'spec'")):
        bad = tmp_path / "bad.safetensors"
        meta = {"format": FORMAT} | ({"spec": spec} if spec is not None else {})
        save_file({"x": torch.zeros(1)}, str(bad), metadata=meta)
        message = invkit_error(read_spec, bad)
        assert message.startswith(f"--generator {bad}: bad generator metadata (")
        if why == "'spec'":
            assert message == f"--generator {bad}: bad generator metadata ('spec')"


def test_load_generator_refuses_weights_of_another_shape(tmp_path):
    path = tmp_path / "g.safetensors"
    save_generator(_net(), path, teacher="t")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    wide = dataclasses.replace(SPEC, width=16)
    save_file(tensors, str(path), metadata={
        "format": FORMAT, "spec": json.dumps(dataclasses.asdict(wide)), "teacher": "t",
        "info": "{}"})
    with pytest.raises(InvkitError) as err:
        load_generator(path)
    assert str(err.value) == (
        f"--generator {path}: weights do not match its metadata (Error(s) in loading "
        f"state_dict for ConditionalGenerator:)")


# ------------------------------------------------------------------ options


def test_defaults_and_config_dict():
    assert DEFAULTS == FastOptions(
        train_steps=600, train_bs=64, lr=1e-3, steps_per_batch=0, meta_lr=0.5,
        diversity=0.0, z_dim=64, width=32, jitter=0, flip=False, generator_seed=0)
    assert FastConfig().to_dict() == {
        "train_steps": 600, "train_bs": 64, "lr": 1e-3, "steps_per_batch": 0,
        "warmup_steps": 300, "meta_lr": 0.5, "inner_lr": 1e-3, "diversity": 0.0, "z_dim": 64,
        "width": 32, "jitter": 0, "flip": False, "grayscale": False, "generator_seed": 0,
        "generator": None, "generator_sha256": None, "save_generator": None, "amp": "fp32",
        "save_every": 100}


def _context(size=16, classes=4, grey=False, **kw):
    meta = TeacherMeta("t", size, classes, mean=(0.5,) * 3, std=(0.25,) * 3, grayscale=grey)
    return Context(meta, **kw)


def test_configure_resolves_each_option(monkeypatch):
    calls = []
    monkeypatch.setattr(fast_options, "check_memory", lambda *a: calls.append(a))
    monkeypatch.setattr(fast_options, "estimate_inversion_bytes", lambda *a: a)
    config = configure(FastOptions(), _context(precision="bf16", checkpoint_every=9,
                                               batch_size=100, device="meta"))
    assert config == FastConfig(warmup_steps=0, amp="bf16", save_every=9)
    assert calls == [((100, 3, 16), "generator training on batches of 64", "meta")]
    config = configure(FastOptions(train_steps=10, train_bs=8, lr=0.5, steps_per_batch=2,
                                   meta_lr=0.25, diversity=0.1, z_dim=3, width=4, jitter=1,
                                   flip=True, generator_seed=5, save_generator="g.st"),
                       _context(grey=True))
    assert config == FastConfig(train_steps=10, train_bs=8, lr=0.5, steps_per_batch=2,
                                warmup_steps=5, meta_lr=0.25, inner_lr=0.5, diversity=0.1,
                                z_dim=3, width=4, jitter=1, flip=True, grayscale=True,
                                generator_seed=5, save_generator="g.st")
    assert calls[-1] == ((8, 3, 16), "generator training on batches of 8", "cpu")
    assert configure(FastOptions(steps_per_batch=1, warmup_steps=7, inner_lr=0.2),
                     _context()).warmup_steps == 7
    assert configure(FastOptions(inner_lr=0.2), _context()).inner_lr == 0.2
    assert configure(FastOptions(steps_per_batch=1, train_steps=7, warmup_steps=7),
                     _context()).warmup_steps == 7
    assert configure(FastOptions(train_steps=5, warmup_steps=9), _context()).warmup_steps == 0


def test_configure_refusals_exact(tmp_path):
    with pytest.raises(InvkitError) as err:
        configure(FastOptions(steps_per_batch=1, train_steps=7, warmup_steps=8), _context())
    assert str(err.value) == "--warmup-steps 8 is more than --train-steps 7"
    with pytest.raises(InvkitError) as err:
        configure(FastOptions(save_generator=str(tmp_path)), _context())
    assert str(err.value) == (
        f"--save-generator {tmp_path} is a directory: give a file name (e.g. "
        f"generator.safetensors)")


def test_configure_from_a_saved_generator(tmp_path):
    spec = GeneratorSpec(z_dim=5, width=8, size=16, channels=1, num_classes=4)
    path = save_generator(_net(spec), tmp_path / "g.safetensors", teacher="t")
    config = configure(FastOptions(generator=str(path), train_steps=50, z_dim=99,
                                   steps_per_batch=2), _context())
    assert (config.generator, config.generator_sha256) == (str(path), file_sha256(path))
    assert (config.z_dim, config.width, config.grayscale) == (5, 8, True)
    assert (config.train_steps, config.warmup_steps, config.steps_per_batch) == (0, 0, 2)
    colour = dataclasses.replace(spec, channels=3)
    save_generator(_net(colour), tmp_path / "c.safetensors", teacher="t")
    assert configure(FastOptions(generator=str(tmp_path / "c.safetensors")),
                     _context(grey=True)).grayscale is False
    for size, classes in ((32, 4), (16, 10)):
        with pytest.raises(InvkitError) as err:
            configure(FastOptions(generator=str(path)), _context(size, classes))
        assert str(err.value) == (
            f"--generator {path} makes 4-class images at 16 px, but the teacher takes "
            f"{classes} classes at {size} px")
    assert fast_options._loaded("", _context()) == {}
    assert fast_options._loaded(None, _context()) == {}


# ------------------------------------------------------------------ the loop


def _objective():
    return build_objective([parse_prior(p) for p in ("cross-entropy", "tv-l2:1e-3")])


def _fast(teacher=None, **kw):
    base = dict(train_steps=4, train_bs=4, lr=1e-2, z_dim=4, width=8, save_every=3)
    base.update(kw)
    return FastGenerator(teacher or tiny_teacher(), _objective(), config=FastConfig(**base))


def test_constructor_defaults_and_spec():
    teacher = tiny_teacher()
    fg = FastGenerator(teacher)
    assert fg.config == FastConfig(grayscale=False) and fg.net is None
    assert fg.student is None and fg.verifier is None and fg.train_seconds == 0.0
    assert fg.objective.describe() == (
        "1*cross-entropy + 0.05*bn-stats(first_bn_multiplier=5) + 0.0001*tv-l2")
    assert fg.device == torch.device("cpu")
    assert fg.spec == GeneratorSpec(z_dim=64, width=32, size=16, channels=3, num_classes=4)
    assert _fast(grayscale=True).spec.channels == 1


def test_training_step_counts():
    assert _fast(train_steps=10).training_steps() == 10
    assert _fast(train_steps=10, steps_per_batch=3, warmup_steps=2).training_steps() == 8
    assert _fast(train_steps=11, steps_per_batch=3, warmup_steps=2).training_steps() == 11
    fg = _fast(train_steps=10, steps_per_batch=3, warmup_steps=2)
    assert fg._total_steps(True) == 11 and fg._total_steps(False) == 3
    plain = _fast(train_steps=10)
    assert plain._total_steps(True) == 11 and plain._total_steps(False) == 1


def test_training_batch_and_inputs():
    fg = _fast()
    z, y = fg._training_batch(torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(z, torch.randn(4, 4, generator=g))
    assert torch.equal(y, torch.randint(4, (4,), generator=g))
    grey = torch.full((1, 1, 2, 2), 0.7)
    want = (0.7 - torch.tensor([0.5, 0.4, 0.3])) / torch.tensor([0.25, 0.2, 0.3])
    assert torch.allclose(fg._inputs(grey), want.view(1, 3, 1, 1).expand(1, 3, 2, 2))
    colour = torch.rand(1, 3, 2, 2)
    assert torch.allclose(fg._inputs(colour), fg.teacher.normalize(colour))


def test_targets_checked_exactly():
    fg = _fast()
    for bad in ([], torch.zeros(2, 1, dtype=torch.long)):
        with pytest.raises(InvkitError) as err:
            fg._targets(bad)
        assert str(err.value) == "targets must be a non-empty list of class indices"
    for bad in ([0, 4], [-1, 3]):
        with pytest.raises(InvkitError) as err:
            fg._targets(bad)
        assert str(err.value) == (
            f"target {max(bad)} is out of range for a 4-class teacher (valid: 0..3)")
    assert fg._targets((3, 0)).tolist() == [3, 0]


def test_mode_seeking_hand_computed():
    images = torch.tensor([[0.0, 0.0], [1.0, 3.0], [0.5, 0.5], [2.0, 2.0]]).view(4, 1, 1, 2)
    z = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 3.0], [1.0, 1.0, 1.0], [9.0, 9.0, 9.0]])
    y = torch.tensor([0, 0, 1, 2])
    # One same-class pair (0, 1): latent distance 6/3 = 2, image distance 4/2 = 2.
    assert float(mode_seeking(images, z, y)) == pytest.approx(2 / (2 + 1e-5))
    y2 = torch.tensor([0, 0, 0, 1])
    pairs = [2 / 2, 1 / 0.5, (5 / 3) / 1.5]    # (0,1), (0,2), (1,2)
    assert float(mode_seeking(images, z, y2, eps=0.0)) == pytest.approx(sum(pairs) / 3)
    none = mode_seeking(images, z, torch.arange(4))
    assert none.shape == () and float(none) == 0.0


def test_augment_draws():
    x = torch.arange(32.0).view(1, 2, 4, 4)
    for seed in range(30):
        ref = random.Random(seed)
        dx, dy = ref.randint(-2, 2), ref.randint(-2, 2)
        want = torch.roll(x, shifts=(dx, dy), dims=(2, 3)) if (dx or dy) else x
        want = torch.flip(want, dims=(3,)) if ref.random() < 0.5 else want
        rng = random.Random(seed)
        assert torch.equal(_augment(x, 2, True, rng), want)
        assert rng.random() == ref.random()
    rng = random.Random(1)
    assert _augment(x, 0, False, rng) is x and rng.random() == random.Random(1).random()


def test_floats_and_main_process():
    out = _floats(torch.tensor(2.5, requires_grad=True),
                  {"b": torch.tensor(1.0, requires_grad=True), "a": torch.tensor(0.5)})
    assert out == {"b": 1.0, "a": 0.5, "total": 2.5} and list(out) == ["b", "a", "total"]
    assert _is_main_process() is True


def test_counter_ticks():
    seen = []
    counter = _Counter(seen.append, 7, stages=2, stage=1, label="L", every=3,
                       stage_iterations=4, done=1)
    evaluated = []
    for _ in range(4):
        counter.tick_lazy(torch.tensor(1.0), {"t": torch.tensor(2.0)},
                          lambda: evaluated.append(1) or torch.zeros(1))
    rows = [(c.stage, c.stages, c.iteration, c.total_iterations, c.stage_iteration,
             c.stage_iterations, c.description, c.losses) for c in seen]
    assert rows == [(1, 2, 2, 7, 1, 4, "L", None),
                    (1, 2, 3, 7, 2, 4, "L", {"t": 2.0, "total": 1.0}),
                    (1, 2, 4, 7, 3, 4, "L", None),
                    (1, 2, 5, 7, 4, 4, "L", {"t": 2.0, "total": 1.0})]
    assert len(evaluated) == 2
    silent = _Counter(None, 3, stages=1, stage=1, label="x", every=1, stage_iterations=3)
    silent.tick_lazy(None, None, None)
    assert silent.done == 0
    silent.tick(None, None)
    assert (silent.done, silent.stage_done) == (1, 1)


def _rows(seen):
    return [(c.stage, c.stages, c.iteration, c.total_iterations, c.stage_iteration,
             c.stage_iterations, c.description, c.losses is None) for c in seen]


def test_generate_plain_checkpoints_and_second_batch():
    seen = []
    fg = _fast()
    result = fg.generate([0, 1, 1], seed=2, callback=seen.append)
    assert _rows(seen) == [
        (1, 2, 1, 5, 1, 4, "train generator", True),
        (1, 2, 2, 5, 2, 4, "train generator", True),
        (1, 2, 3, 5, 3, 4, "train generator", False),
        (1, 2, 4, 5, 4, 4, "train generator", False),
        (2, 2, 5, 5, 1, 1, "sample", False)]
    assert sorted(result.losses) == ["cross-entropy", "total", "tv-l2"]
    assert result.losses == seen[-1].losses and torch.equal(result.inputs, seen[-1].inputs)
    assert len(result.timings) == 2 and fg.train_seconds > 0
    seen.clear()
    again = fg.generate([0, 1, 1], seed=2, callback=seen.append)
    assert _rows(seen) == [(1, 1, 1, 1, 1, 1, "sample", False)]
    assert len(again.timings) == 1 and torch.equal(again.inputs, result.inputs)
    other = fg.generate([0, 1, 1], seed=3)
    assert not torch.equal(other.inputs, result.inputs)
    # Sampling uses G's running statistics: an image does not depend on its batch.
    alone = fg.generate([1], seed=9).inputs
    assert fg.net.training is True   # sampled in eval mode, then put back
    z = latents(1, 4, 9)
    fg.net.eval()
    assert torch.allclose(alone, fg._inputs(fg.net(z, torch.tensor([1]))), atol=1e-6)


def test_generate_fast_k_checkpoints():
    seen = []
    fg = _fast(train_steps=7, steps_per_batch=2, warmup_steps=2)
    assert fg.training_steps() == 6
    fg.generate([2, 3], seed=1, callback=seen.append)
    assert _rows(seen) == [
        (1, 2, 1, 8, 1, 6, "train generator", True),
        (1, 2, 2, 8, 2, 6, "train generator", True),
        (1, 2, 3, 8, 3, 6, "train generator", False),
        (1, 2, 4, 8, 4, 6, "train generator", True),
        (1, 2, 5, 8, 5, 6, "train generator", True),
        (1, 2, 6, 8, 6, 6, "train generator", False),
        (2, 2, 7, 8, 1, 2, "fine-tune 2 steps", True),
        (2, 2, 8, 8, 2, 2, "fine-tune 2 steps", False)]
    before = copy.deepcopy(fg.net.state_dict())
    fg.generate([2, 3], seed=1)
    for k, v in fg.net.state_dict().items():  # fine-tuning works on a copy
        assert torch.equal(v, before[k])


def test_training_is_seeded_by_generator_seed_alone():
    a = _fast(generator_seed=3).train()
    b = _fast(generator_seed=3).train()
    c = _fast(generator_seed=4).train()
    for (k, v), w, u in zip(a.state_dict().items(), b.state_dict().values(),
                            c.state_dict().values()):
        assert torch.equal(v, w)
    assert not torch.equal(a.project.weight, c.project.weight)
    fg = _fast(train_steps=0)
    untrained = fg.train()
    assert fg.train() is untrained
    assert torch.equal(untrained.project.weight, _fast_init(fg).project.weight)


def _fast_init(fg):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(fg.config.generator_seed)
        return ConditionalGenerator(fg.spec)


def test_reptile_moves_a_fraction_towards_the_adapted_weights():
    fg = _fast(steps_per_batch=2, warmup_steps=0, meta_lr=0.25, inner_lr=0.05, jitter=1,
               flip=True)
    net = _fast_init(fg).train()
    other = copy.deepcopy(net)
    z, y = fg._training_batch(torch.Generator().manual_seed(0))
    counter = _Counter(None, 9, stages=1, stage=1, label="", every=1, stage_iterations=9)
    start = [p.detach().clone() for p in net.parameters()]
    with fg._attached():
        fg._reptile(net, z, y, random.Random(4), counter)
        optimizer = torch.optim.Adam(other.parameters(), lr=0.05, betas=BETAS)
        rng = random.Random(4)
        for _ in range(2):
            fg._step(other, optimizer, z, y, rng, counter)
    for p, p0, q in zip(net.parameters(), start, other.parameters()):
        assert torch.allclose(p, p0 + 0.25 * (q - p0), atol=1e-6)
    assert BETAS == (0.5, 0.999)


def test_loss_adds_the_weighted_mode_seeking_term():
    fg = _fast(diversity=0.5)
    net = _fast_init(fg).train()
    z, y = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)), \
        torch.tensor([0, 0, 1, 1])
    with fg._attached():
        total, terms, images = fg._loss(net, z, y, random.Random(0))
        plain = _fast(diversity=0.0)
        base, base_terms, _ = plain._loss(net, z, y, random.Random(0))
    assert sorted(terms) == ["cross-entropy", "mode-seeking", "tv-l2"]
    assert "mode-seeking" not in base_terms
    assert float(terms["mode-seeking"]) == pytest.approx(float(mode_seeking(images, z, y)))
    assert float(total) == pytest.approx(float(base) + 0.5 * float(terms["mode-seeking"]),
                                         rel=1e-5)


def test_save_and_artifacts(tmp_path):
    fg = _fast()
    with pytest.raises(InvkitError) as err:
        fg.save(tmp_path / "g.safetensors")
    assert str(err.value) == "the generator is not trained yet: call train() or generate()"
    fg.save_artifacts(tmp_path)
    assert not (tmp_path / "generator.safetensors").exists()
    fg.train()
    fg.save_artifacts(tmp_path)
    spec, metadata = read_spec(tmp_path / "generator.safetensors")
    assert spec == fg.spec and metadata["teacher"] == "tiny-bn"
    info = json.loads(metadata["info"])
    assert info == {"train_steps": 4, "steps_per_batch": 0, "generator_seed": 0,
                    "objective": "1*cross-entropy + 0.001*tv-l2",
                    "train_seconds": round(fg.train_seconds, 3)}


def test_train_saves_when_asked_and_loads_a_saved_generator(tmp_path):
    path = tmp_path / "saved.safetensors"
    fg = _fast(save_generator=str(path))
    net = fg.train()
    assert path.is_file()
    loaded = _fast(generator=str(path))
    assert loaded.training_steps() == 0 and loaded._total_steps(True) == 1
    assert torch.equal(loaded.net.project.weight, net.project.weight)
    seen = []
    loaded.generate([0], seed=0, callback=seen.append)
    assert _rows(seen) == [(1, 1, 1, 1, 1, 1, "sample", False)]


def test_feature_diversity_hand_computed():
    teacher = tiny_teacher()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 16, 16, generator=g)
    targets = torch.tensor([1, 1, 1, 2, 3])
    captured = []
    handle = teacher.module[-1].register_forward_hook(
        lambda m, i, o: captured.append(i[0].detach()))
    with torch.no_grad():
        teacher.module(teacher.prepare(images))
    handle.remove()
    f = captured[0][:3]
    d = [torch.dist(f[i], f[j]).item() for i in range(3) for j in range(3) if i != j]
    want = sum(d) / 6
    assert feature_diversity(teacher, images, targets) == pytest.approx(want, rel=1e-5)
    assert feature_diversity(teacher, images, targets, batch_size=2) == pytest.approx(
        want, rel=1e-5)
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert feature_diversity(teacher, as_uint8, targets) == pytest.approx(
        feature_diversity(teacher, as_uint8.float() / 255, targets), rel=1e-6)
    assert feature_diversity(teacher, images, torch.arange(5)) == 0.0
    two = torch.tensor([1, 1, 2, 2, 3])
    f4 = captured[0][:4]
    want2 = (torch.dist(f4[0], f4[1]).item() + torch.dist(f4[2], f4[3]).item()) / 2
    assert feature_diversity(teacher, images, two) == pytest.approx(want2, rel=1e-5)


def test_feature_diversity_needs_a_linear_layer():
    from invkit.specs import Teacher

    teacher = tiny_teacher()
    conv_only = Teacher(module=torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)),
                        meta=teacher.meta, name="convs")
    with pytest.raises(InvkitError) as err:
        feature_diversity(conv_only, torch.rand(2, 3, 16, 16), torch.tensor([0, 0]))
    assert str(err.value) == "teacher 'convs' has no linear layer to read features at"


# ------------------------------------------------------------------ the plugin module


def test_plugin_lazy_names_factory_and_spec():
    assert fast_plugin.FastGenerator is FastGenerator
    assert fast_plugin.ConditionalGenerator is ConditionalGenerator
    assert fast_plugin.mode_seeking is mode_seeking
    assert fast_plugin.feature_diversity is feature_diversity
    assert fast_plugin.GeneratorSpec is GeneratorSpec
    assert fast_plugin.load_generator is load_generator
    assert fast_plugin.save_generator is save_generator
    with pytest.raises(AttributeError) as err:
        fast_plugin.nothing  # noqa: B018
    assert str(err.value) == "module 'invkit_plugins.generative' has no attribute 'nothing'"
    teacher, obj, config = tiny_teacher(), _objective(), FastConfig(z_dim=3)
    student = tiny_teacher(1)
    made = fast_plugin.make_generator(teacher, obj, config=config, student=student,
                                      verifier=tiny_teacher(1))
    assert (made.teacher, made.objective, made.config, made.student) == (
        teacher, obj, config, student)
    assert made.verifier is not None
    (spec,) = list(fast_plugin.invkit_methods())
    assert (spec.name, spec.needs_batchnorm, spec.factory, spec.configure) == (
        "fast", True, fast_plugin.make_generator, configure)
    assert fast_plugin.default_objective().describe() == (
        "1*cross-entropy + 0.05*bn-stats(first_bn_multiplier=5) + 0.0001*tv-l2")
    assert fast_method.FastConfig is FastConfig
