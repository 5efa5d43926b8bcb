"""`labeler upload neuronpedia`: Neuronpedia's own client (PyPI `neuronpedia`, the interop extra) sends a
run to a recording HTTP server on 127.0.0.1:3000, where its USE_LOCALHOST=true points."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from label_runs import write_run

from labeler.store.neuronpedia_upload import top_activation

CLIENT_PORT = 3000  # neuronpedia/requests/base_request.py: USE_LOCALHOST=true -> http://localhost:3000/api
KEY = "np-test-key"  # not a real key: the local server only compares it


class Recorder(ThreadingHTTPServer):
    requests: list[tuple[str, dict[str, str], Any]]


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), body))
        reply = json.dumps({"message": "ok"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def neuronpedia_server() -> Iterator[Recorder]:
    try:
        server = Recorder(("127.0.0.1", CLIENT_PORT), Handler)
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise
        pytest.skip(
            f"port {CLIENT_PORT} is taken: Neuronpedia's client reaches a local server only at localhost:3000/api "
            "(USE_LOCALHOST=true; it reads no other variable for its base URL)"
        )
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def upload(run: Path, *flags: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process: the client reads USE_LOCALHOST when it is imported."""
    env = {k: v for k, v in os.environ.items() if k != "NEURONPEDIA_API_KEY"}
    env |= {"USE_LOCALHOST": "true", **({"NEURONPEDIA_API_KEY": key} if key else {})}
    code = "import sys; from labeler.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, "upload", "neuronpedia", str(run), *flags]
    return subprocess.run(command, env=env, cwd=run.parent, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_upload_sends_every_labelled_feature_in_batches_of_128(neuronpedia_server: Recorder, tmp_path: Path) -> None:
    recs = write_run(str(tmp_path / "run"), "run-a", n=320, chunk_size=100)
    (tmp_path / ".env").write_text("NEURONPEDIA_API_KEY=from-a-file\n")  # must not be read
    flags = ["--model-id", "gpt2-small", "--source", "6-res-jb", "--top-activations", "2"]
    result = upload(tmp_path / "run", *flags)
    assert result.returncode == 0, result.stderr
    labelled = sorted((r for r in recs if r.status == "labelled"), key=lambda r: r.feature)
    assert len(labelled) > 128 and any(r.status != "labelled" for r in recs)
    requests = neuronpedia_server.requests
    assert [path for path, _, _ in requests] == ["/api/feature/upload-batch"] * len(requests)
    assert all(headers["X-Api-Key"] == KEY for _, headers, _ in requests)
    assert [len(body["features"]) for _, _, body in requests] == [128] * (len(labelled) // 128) + (
        [len(labelled) % 128] if len(labelled) % 128 else []
    )
    assert {(body["modelId"], body["source"]) for _, _, body in requests} == {("gpt2-small", "6-res-jb")}
    sent = [feature for _, _, body in requests for feature in body["features"]]
    exemplars = pq.read_table(tmp_path / "run-exemplars").to_pylist()  # where write_run puts them
    for feature, record in zip(sent, labelled, strict=True):
        assert feature["index"] == record.feature and feature["density"] == record.activation_frequency
        assert feature["explanations"] == [
            {
                "text": record.label,
                "methodName": "labeler-token-space-gd",
                "modelName": "sentence-transformers/all-MiniLM-L6-v2",
            }
        ]
        own = sorted((e for e in exemplars if e["feature"] == record.feature), key=lambda e: -e["activation"])[:2]
        assert len(feature["activations"]) == 2
        for activation, exemplar in zip(feature["activations"], own, strict=True):
            assert "".join(activation["tokens"]) == exemplar["context"]
            at = activation["tokens"].index(exemplar["target"])
            assert activation["values"][at] == exemplar["activation"] > 0
            assert sum(activation["values"]) == exemplar["activation"]
    assert f"uploaded {len(labelled)} features in {len(requests)} batch(es)" in result.stderr


@pytest.mark.slow
def test_upload_without_the_key_variable_fails_before_sending(neuronpedia_server: Recorder, tmp_path: Path) -> None:
    write_run(str(tmp_path / "run"), "run-a", n=5)
    (tmp_path / ".env").write_text("NEURONPEDIA_API_KEY=from-a-file\n")  # the client would load it; we do not
    result = upload(tmp_path / "run", "--model-id", "gpt2-small", "--source", "6-res-jb", key=None)
    assert result.returncode == 2
    assert "NEURONPEDIA_API_KEY is not set" in result.stderr
    assert neuronpedia_server.requests == []


@pytest.mark.parametrize(
    ("context", "target", "tokens", "values"),
    [
        ("the cat sat", "cat", ("the ", "cat", " sat"), (0.0, 2.5, 0.0)),
        ("cat sat", "cat", ("cat", " sat"), (2.5, 0.0)),
        ("the cat saw a cat", "cat", ("the cat saw a cat",), (2.5,)),  # which cat is not recorded
    ],
)
def test_an_exemplar_becomes_tokens_with_the_activation_on_its_target(
    context: str, target: str, tokens: tuple[str, ...], values: tuple[float, ...]
) -> None:
    activation = top_activation(context, target, 2.5)
    assert (activation.tokens, activation.values) == (tokens, values)


@pytest.mark.slow
def test_upload_names_the_discriminator_by_its_name_never_its_folder(
    neuronpedia_server: Recorder, tmp_path: Path
) -> None:
    """A run labelled with hf:FOLDER: the upload asks for the model's name before sending anything, then sends
    that name as the explainer model."""
    folder = str(tmp_path / "models" / "llama")
    write_run(str(tmp_path / "run"), "run-a", n=5, discriminator=f"hf:{folder}")
    flags = ["--model-id", "gpt2-small", "--source", "6-res-jb"]
    refused = upload(tmp_path / "run", *flags)
    assert refused.returncode == 2 and f"--model-name hf:{folder}=NAME" in refused.stderr, refused.stderr
    assert neuronpedia_server.requests == []
    sent = upload(tmp_path / "run", *flags, "--model-name", f"hf:{folder}=meta-llama/Llama-3.2-1B")
    assert sent.returncode == 0, sent.stderr
    explanations = [
        e for _, _, body in neuronpedia_server.requests for f in body["features"] for e in f["explanations"]
    ]
    assert explanations and {e["modelName"] for e in explanations} == {"meta-llama/Llama-3.2-1B"}
    assert folder not in json.dumps([body for _, _, body in neuronpedia_server.requests])
