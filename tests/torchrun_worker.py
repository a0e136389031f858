"""Worker launched by tests/test_torchrun.py under torchrun: writes one dataset per format.

Usage: python -m torch.distributed.run --standalone --nproc-per-node 2 tests/torchrun_worker.py OUT [--resume]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests.*

from invkit.pipeline import generate_dataset, plan_batches  # noqa: E402
from invkit.distributed import (  # noqa: E402
    dist_env, init_distributed, shutdown_distributed,
)
from tests.dataset_fakes import fake_generate  # noqa: E402

PLAN = dict(num_classes=10, batch_size=3, num_batches=5, seed=11, random_labels=True)
CONFIG = {"method": "fake", **PLAN}


def write(out: Path, resume: bool = False) -> None:
    """The png dataset (resumed when ``resume``), then the same plan as safetensors shards."""
    plan = plan_batches(**PLAN)
    names = [f"c{i}" for i in range(10)]
    generate_dataset(plan, fake_generate, out / "png", config=CONFIG, num_classes=10,
                     class_names=names, resume=resume)
    generate_dataset(plan, fake_generate, out / "safetensors", config=CONFIG, num_classes=10,
                     class_names=names, fmt="safetensors", shard_size=4)


if __name__ == "__main__":
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    assert env.world_size == 2, env  # launched by torchrun
    write(Path(sys.argv[1]), resume="--resume" in sys.argv)
    print(f"rank {dist_env().rank} done", flush=True)
    shutdown_distributed()  # as `invkit run` does: a clean exit under torchrun
