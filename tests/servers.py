"""Real servers for the service's tests: moto's S3 server and a local Ray cluster, both on 127.0.0.1.

Each is started as its own process with its own port and temporary folder, and always stopped.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


SPARE_PORTS = range(20000, 32768)
"""Where a test's server ports come from: above Ray's worker ports (10002-19999 by default) and below the kernel's
range for the local ports of outgoing connections (32768-60999 by default; checked in `free_port`). A server is told
its port on its command line and binds it later; in between, nothing but another explicit bind can take a port here
(an OS-picked port, the kernel's range, went to a connection of a busy Ray cluster now and then)."""

_chosen: set[int] = set()


def free_port() -> int:
    """A port in SPARE_PORTS that nothing listens on now and that no earlier call of this process returned."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    spare = range(SPARE_PORTS.start, min(SPARE_PORTS.stop, low))
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(spare)
        if port in _chosen:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _chosen.add(port)
        return port
    raise RuntimeError(f"no free port in {spare} after 200 tries")


MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
"""Keys moto accepts, given the environment way: a run config refuses credentials in its storage options."""


class MotoS3:
    """`moto_server` on 127.0.0.1 that records its requests, so a restart can replay them (moto keeps
    state in memory; replaying the recording is how its state survives a stop)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.recording = folder / "moto_recording"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, replay: bool = False) -> None:
        env = {
            **os.environ,
            "MOTO_ENABLE_RECORDING": "True",
            "MOTO_RECORDER_FILEPATH": str(self.recording),
        }
        exe = shutil.which("moto_server", path=str(BIN)) or shutil.which("moto_server") or "moto_server"
        log = open(self.folder / "moto.log", "ab")  # noqa: SIM115 - held by the child process
        self.process = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"moto_server did not start; see {self.folder / 'moto.log'}") from None
                time.sleep(0.1)
        if replay:
            request = urllib.request.Request(f"{self.endpoint}/moto-api/recorder/replay-recording", method="POST")
            urllib.request.urlopen(request, timeout=120).read()

    def _drop_torn_record(self) -> None:
        """Cut the recording after its last whole request. A server stopped while it was writing a record (a
        large PUT's body is written in several pieces) leaves a partial last line; the next server would append
        its first record to it, and moto's replay cannot parse that line (it answers 500). The torn request was
        never answered, so its client retries it anyway."""
        if not self.recording.exists():
            return
        text = self.recording.read_bytes()
        whole = text[: text.rfind(b"\n") + 1]
        if whole != text:
            self.recording.write_bytes(whole)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None
        self._drop_torn_record()

    def storage_options(self, keys: bool = True) -> dict[str, object]:
        """fsspec options for this server; keys=False for a run config, which refuses credentials (they come
        from MOTO_CREDENTIALS in the environment then)."""
        options: dict[str, object] = {"endpoint_url": self.endpoint, "skip_instance_cache": True}
        return {**options, "key": "testing", "secret": "testing"} if keys else options

    def make_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=name)


class RayCluster:
    """`ray start --head` on 127.0.0.1 with its own temp folder and ports, every process of it listening on loopback
    only; `stop` ends only this cluster."""

    def __init__(self, folder: Path, num_cpus: int = 2, num_gpus: int = 0) -> None:
        self.folder = folder
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus

    def env(self) -> dict[str, str]:
        """The environment of this cluster's processes and clients: token auth off (a throwaway local cluster), and
        every process on loopback (LOOPBACK_RAY_ENV, as a local `labeler run`'s Ray)."""
        from labeler.cli.labelling import LOOPBACK_RAY_ENV

        return {
            **os.environ,
            **MOTO_CREDENTIALS,
            **LOOPBACK_RAY_ENV,
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": "disabled",
        }

    def start(self) -> None:
        done = subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                f"--dashboard-port={self.dashboard_port}",
                "--dashboard-host=127.0.0.1",
                "--include-dashboard=true",
                f"--num-cpus={self.num_cpus}",
                f"--num-gpus={self.num_gpus}",
                f"--temp-dir={self.folder}",
                # Every port of its own, so this cluster never collides with another on the machine.
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--node-manager-port={free_port()}",
                f"--object-manager-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                "--disable-usage-stats",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=self.env(),
        )
        if done.returncode != 0:  # say why: `ray start` failed once in CI, and its stderr was not kept
            said = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            raise RuntimeError(f"`ray start --head` exited {done.returncode}:\n{said}")

    def stop(self) -> None:
        # `ray stop` would stop every cluster of this user; this one's processes are found by its temp folder.
        out = subprocess.run(["pgrep", "-f", str(self.folder)], capture_output=True, text=True).stdout
        for pid in (int(p) for p in out.split()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def tiny_model(folder: Path) -> Path:
    """A random tiny Llama and its word tokenizer saved to `folder` (for `--discriminator hf:FOLDER`)."""
    import torch
    import transformers

    from labeler.toys.synthetic import build_tokenizer, default_world, model_config

    tokenizer = build_tokenizer(default_world())
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(model_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def exemplar_parts(folder: Path, n_features: int, parts: int = 3, rows: int = 8) -> Path:
    """A folder of Parquet parts with `rows` examples per feature (half active), features 0..n-1 spread over parts."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeler.toys.synthetic import default_world, make_texts

    world = default_world()
    texts = make_texts(world, 64, np.random.default_rng(0))
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(parts):
        features = list(range(part, n_features, parts))
        table = pa.table(
            {
                "feature": [f for f in features for _ in range(rows)],
                "context": [texts[(f + r) % len(texts)] for f in features for r in range(rows)],
                "target": [texts[(f + r) % len(texts)].split()[0] for f in features for r in range(rows)],
                "activation": [float(r % 2) for _ in features for r in range(rows)],
            }
        )
        pq.write_table(table, folder / f"part-{part:05d}.parquet")
    return folder


def labelling_data(folder: Path, n_features: int) -> dict[str, Path]:
    """What a labelling run of these tests reads: a tiny model (`model`) and exemplar parts of features 0..n-1
    (`exemplars`), under `folder`."""
    return {"model": tiny_model(folder / "model"), "exemplars": exemplar_parts(folder / "exemplars", n_features)}
