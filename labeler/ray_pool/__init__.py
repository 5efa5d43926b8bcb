"""The Ray adapter: worker actors (pool.py) or tensor-parallel worker gangs (gang.py) as the scheduler's Pool.

`make_pool` picks one by `workers.tensor_parallel`. The package never calls `ray.init`: the CLI connects first.
It and labeler/cli are the only modules that import Ray.
"""

from __future__ import annotations

from collections.abc import Mapping

from labeler.ray_pool.base import WorkerStartError
from labeler.ray_pool.gang import GangPool, GangRank
from labeler.ray_pool.pool import LabelActor, RayPool
from labeler.run.config import WorkersConfig
from labeler.run.sink import SinkConfig
from labeler.run.worker import LabellerSpec

__all__ = ["GangPool", "GangRank", "LabelActor", "RayPool", "WorkerStartError", "make_pool"]


def make_pool(
    config: WorkersConfig,
    spec: LabellerSpec,
    sink_url: str,
    sink_config: SinkConfig,
    env: Mapping[str, str] | None = None,
) -> RayPool | GangPool:
    """The pool of `config`: gangs of `tensor_parallel` ranks when it is above 1, else one actor per worker."""
    kind = GangPool if config.tensor_parallel > 1 else RayPool
    return kind(config, spec, sink_url, sink_config, env)
