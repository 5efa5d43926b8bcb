"""Write Prometheus file_sd targets for labeler's metrics on a cluster made by the Ray cluster launcher.

Run on the head node (deploy/launcher/aws-gpu.yaml starts it): every alive Ray node becomes one target
group with labeler's metrics port (the run config's, 9310: one worker process per GPU node). The file is
replaced atomically, so Prometheus never reads half of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

DEFAULT_PORTS = (9310,)


def target_groups(nodes: list[dict[str, Any]], ports: tuple[int, ...] = DEFAULT_PORTS) -> list[dict[str, Any]]:
    """file_sd target groups from `ray.nodes()` records: alive nodes only, head first."""
    groups = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        address = node["NodeManagerAddress"]
        is_head = "node:__internal_head__" in node.get("Resources", {})
        groups.append(
            {
                "targets": [f"{address}:{port}" for port in ports],
                "labels": {"component": "head" if is_head else "worker", "ray_node_id": node["NodeID"]},
            }
        )
    return sorted(groups, key=lambda group: group["labels"]["component"] != "head")


def write_atomically(path: Path, groups: list[dict[str, Any]]) -> None:
    scratch = path.with_suffix(path.suffix + ".tmp")
    scratch.write_text(json.dumps(groups, indent=2) + "\n")
    os.replace(scratch, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the file_sd JSON file to (re)write")
    parser.add_argument("--ports", type=int, nargs="+", default=list(DEFAULT_PORTS), help="metrics ports")
    parser.add_argument("--every", type=float, default=0, help="rewrite every N seconds (0: once)")
    parser.add_argument("--address", default="auto", help="Ray cluster address")
    args = parser.parse_args()

    import ray  # here, not at import time: the target logic above is tested without Ray

    ray.init(address=args.address, logging_level=logging.ERROR)
    while True:
        write_atomically(args.out, target_groups(ray.nodes(), tuple(args.ports)))
        if not args.every:
            return
        time.sleep(args.every)


if __name__ == "__main__":
    main()
