"""torchrun support without torchrun: the environment read into DistEnv, the device each
rank gets (every refusal's exact message), the backend and timeout of the process group,
and the collectives called exactly when a group of more than one rank is active (the
torch.distributed and torch.cuda calls are recorded by fakes, in this process)."""

from __future__ import annotations

import atexit
import os

import pytest
import torch
import torch.distributed as dist

from invkit import distributed
from invkit.distributed import (
    TIMEOUT, DistEnv, barrier, broadcast_object, dist_env, init_distributed,
    is_main_process, local_device, shutdown_distributed,
)
from tests.expect import invkit_error

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture
def env(monkeypatch):
    """A clean torchrun environment; ``env(RANK="1", ...)`` sets variables."""
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)

    def set_env(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


@pytest.fixture
def group(monkeypatch):
    """A fake initialised process group of ``group.size`` ranks; records the calls."""
    calls = []

    class Group:
        size = 2
        backend = "gloo"

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: Group.size)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_backend", lambda: Group.backend)
    monkeypatch.setattr(dist, "barrier", lambda **kw: calls.append(("barrier", kw)))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append(("destroy",)))
    Group.calls = calls
    return Group


def test_dist_env_reads_torchrun_variables(env):
    assert dist_env() == DistEnv(0, 1, 0)
    env(RANK="2", WORLD_SIZE="4", LOCAL_RANK="1")
    assert dist_env() == DistEnv(rank=2, world_size=4, local_rank=1)
    assert not is_main_process()
    env(RANK="0")
    assert is_main_process()


def test_a_caller_made_group_is_the_truth(env, group, monkeypatch):
    env(RANK="5", WORLD_SIZE="9")
    assert dist_env() == DistEnv(rank=1, world_size=2, local_rank=1)
    env(LOCAL_RANK="0")
    assert dist_env() == DistEnv(rank=1, world_size=2, local_rank=0)
    monkeypatch.setattr(dist, "is_available", lambda: False)
    assert dist_env() == DistEnv(rank=5, world_size=9, local_rank=0)


def test_dist_env_properties():
    assert DistEnv().distributed is False and DistEnv().is_main is True
    assert DistEnv(world_size=2).distributed is True
    assert DistEnv(rank=1, world_size=2).is_main is False
    assert (DistEnv().rank, DistEnv().world_size, DistEnv().local_rank) == (0, 1, 0)


@pytest.mark.parametrize("requested", ["gpu", "cuda:x", "cpu:0", "auto:1", "mps:0", "CPU",
                                       "cuda:", "xcpu", "cpu0"])
def test_malformed_devices_name_the_valid_forms(requested):
    assert invkit_error(lambda: local_device(requested)) == (
        f"device {requested!r} is not valid (valid: auto, cpu, cuda, cuda:N, mps)")


def test_cpu_and_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for requested in ("cpu", " cpu ", None, "auto", "", "  "):
        assert local_device(requested) == "cpu"
    assert local_device() == "cpu"


def test_mps_only_where_it_exists(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    no_mps = ("device 'mps': this machine has no MPS (Apple GPU) device; use --device cpu")
    assert invkit_error(lambda: local_device("mps")) == no_mps
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert local_device("mps") == "mps"
    monkeypatch.setattr(torch.backends, "mps", None)
    assert invkit_error(lambda: local_device("mps")) == no_mps


def test_cuda_without_cuda_names_the_build(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert invkit_error(lambda: local_device("cuda:0")) == (
        f"device 'cuda:0': CUDA is not available on this machine (torch {torch.__version__}, "
        "built for CUDA none); use --device cpu")
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    assert invkit_error(lambda: local_device("cuda")) == (
        f"device 'cuda': CUDA is not available on this machine (torch {torch.__version__}, "
        "built for CUDA 12.1); use --device cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert "CUDA is not available" in invkit_error(lambda: local_device("cuda"))


@pytest.fixture
def cuda(monkeypatch):
    """Two fake CUDA devices, current device 1; ``cuda.selected`` records set_device."""
    class Cuda:
        selected = []

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: Cuda.selected.append(i))
    return Cuda


def test_cuda_devices_outside_torchrun(env, cuda):
    assert local_device("cuda") == "cuda:1"  # the current device
    assert local_device("auto") == "cuda:1"
    assert local_device("cuda:0") == "cuda:0"
    assert local_device("cuda:1") == "cuda:1"
    assert cuda.selected == [1, 1, 0, 1]
    assert all(type(i) is int for i in cuda.selected)
    assert invkit_error(lambda: local_device("cuda:2")) == (
        "device 'cuda:2': this machine has 2 CUDA device(s), cuda:0 to cuda:1")
    assert cuda.selected == [1, 1, 0, 1]


def test_cuda_devices_under_torchrun_follow_the_local_rank(env, cuda):
    env(RANK="1", WORLD_SIZE="2", LOCAL_RANK="0")
    assert local_device("cuda") == "cuda:0"
    env(LOCAL_RANK="1")
    assert local_device(None) == "cuda:1"
    assert local_device("cuda:0") == "cuda:0"  # an explicit index is kept as given
    env(LOCAL_RANK="2")
    assert invkit_error(lambda: local_device("cuda")) == (
        "local rank 2 has no CUDA device: this machine has 2 (start at most 2 processes per "
        "node)")
    assert cuda.selected == [0, 1, 0]


def test_init_distributed_outside_torchrun_joins_nothing(env, monkeypatch):
    joined = []
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: joined.append(kw))
    assert init_distributed("cpu") == DistEnv(0, 1, 0)
    assert init_distributed() == DistEnv(0, 1, 0)
    assert joined == []


def test_init_distributed_under_torchrun_picks_the_backend(env, monkeypatch):
    joined, registered = [], []
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: joined.append(kw))
    monkeypatch.setattr(atexit, "register", lambda fn: registered.append(fn))
    env(RANK="1", WORLD_SIZE="3", LOCAL_RANK="1")
    assert init_distributed("cpu") == DistEnv(1, 3, 1)
    assert init_distributed("cuda:1") == DistEnv(1, 3, 1)
    assert init_distributed(None) == DistEnv(1, 3, 1)
    assert init_distributed("mps") == DistEnv(1, 3, 1)
    assert joined == [{"backend": "gloo", "timeout": TIMEOUT},
                      {"backend": "nccl", "timeout": TIMEOUT},
                      {"backend": "gloo", "timeout": TIMEOUT},
                      {"backend": "gloo", "timeout": TIMEOUT}]
    assert registered == [distributed._destroy] * 4
    monkeypatch.setattr(dist, "is_available", lambda: False)
    assert init_distributed("cpu") == DistEnv(1, 3, 1) and len(joined) == 4


def test_init_distributed_leaves_an_existing_group_alone(group, monkeypatch):
    joined = []
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: joined.append(kw))
    assert init_distributed("cpu") == DistEnv(1, 2, int(os.environ.get("LOCAL_RANK", 1)))
    assert joined == []


def test_collectives_are_no_ops_in_a_single_process(env, monkeypatch):
    called = []
    monkeypatch.setattr(dist, "barrier", lambda **kw: called.append(kw))
    monkeypatch.setattr(dist, "broadcast_object_list", lambda *a, **kw: called.append(a))
    obj = {"resume": True}
    assert broadcast_object(obj) is obj
    assert barrier() is None
    assert shutdown_distributed() is None
    assert called == []


def test_a_group_of_one_rank_is_not_active(group, monkeypatch):
    group.size = 1
    monkeypatch.setattr(dist, "broadcast_object_list",
                        lambda *a, **kw: group.calls.append("broadcast"))
    obj = ["mine"]
    assert broadcast_object(obj) is obj
    barrier()
    assert group.calls == []
    shutdown_distributed()  # destroys the group, no barrier, no exit
    assert group.calls == [("destroy",)]


def test_broadcast_sends_rank_zeros_object(group, monkeypatch):
    sent = []

    def broadcast(box, src):
        sent.append((list(box), src))
        box[0] = "rank 0's"

    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    assert broadcast_object("mine") == "rank 0's"
    assert sent == [(["mine"], 0)]


def test_barrier_names_the_cuda_device_under_nccl(group, monkeypatch):
    barrier()
    group.backend = "nccl"
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    barrier()
    assert group.calls == [("barrier", {}), ("barrier", {"device_ids": [3]})]


def test_shutdown_meets_destroys_and_exits_zero(group, monkeypatch):
    class Exited(Exception):
        pass

    def exit_(code):
        group.calls.append(("exit", code))
        raise Exited

    monkeypatch.setattr(os, "_exit", exit_)
    with pytest.raises(Exited):
        shutdown_distributed()
    assert group.calls == [("barrier", {}), ("destroy",), ("exit", 0)]
