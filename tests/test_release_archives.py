"""The MobileNets' official float releases: a .tgz holding the float TFLite file, served here from 127.0.0.1 (a
release-shaped archive the test builds from our own model with random weights, through litert-torch), downloaded
once, sha256-checked, converted by the graph into our layout and checked against the file's own outputs."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="the litert extra is not installed (make setup installs it)")

from t2tedge.cli import main  # noqa: E402
from t2tedge.data import discover, evenly_spread, load_batch  # noqa: E402
from t2tedge.errors import CheckpointError, T2TEdgeError  # noqa: E402
from t2tedge.models import create_model, get_spec, registry  # noqa: E402
from t2tedge.models.pretrained import get_pretrained  # noqa: E402
from t2tedge.models.release import fetch_official  # noqa: E402
from t2tedge.models.tflite_weights import state_dict_from_tflite, tflite_outputs  # noqa: E402


def float_tflite(name: str, destination: Path) -> Path:
    """A float TFLite file of `name` with random weights and non-trivial BatchNorm statistics (so folding them into
    the file's convolutions matters), written by litert-torch as an app's pipeline would."""
    from t2tedge.export.litert_export import ChannelsLast, convert_module

    torch.manual_seed(1)
    model = create_model(name, export_form=True).eval()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("running_var"):
                value.uniform_(0.5, 2.0)
            elif key.endswith(("running_mean", ".bias")):
                value.uniform_(-0.2, 0.2)
    crop = get_spec(name).preprocess.crop
    convert_module(ChannelsLast(model).eval(), torch.zeros(1, crop, crop, 3), destination)
    return destination


@pytest.fixture(scope="module")
def real_images(val_dir):
    samples = evenly_spread(discover(val_dir), 8)
    return load_batch(samples, get_spec("mobilenet_v2_100").preprocess)[0]


@pytest.mark.parametrize("name", ["mobilenet_v1_100", "mobilenet_v2_100", "mobilenet_v2_140"])
def test_a_float_tflite_of_each_baseline_converts_back_to_the_same_logits(name, tmp_path, real_images):
    tflite = float_tflite(name, tmp_path / f"{name}.tflite")
    model = create_model(name)  # another random initialisation: every value must come from the file
    model.load_state_dict(state_dict_from_tflite(model, tflite))
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(real_images)).numpy()
    assert np.abs(ours - tflite_outputs(tflite, real_images)).max() <= 1e-4
    other = "mobilenet_v2_100" if name != "mobilenet_v2_100" else "mobilenet_v2_140"
    with pytest.raises(T2TEdgeError, match="another architecture"):
        state_dict_from_tflite(create_model(other), tflite)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def release_server(tmp_path_factory):
    """A local HTTP server on 127.0.0.1 serving a release-shaped archive of MobileNetV2 1.0: the float .tflite with
    the other files the real archives hold beside it."""
    root = tmp_path_factory.mktemp("release_server")
    tflite = float_tflite("mobilenet_v2_100", root / "mobilenet_v2_1.0_224.tflite")
    with tarfile.open(root / "mobilenet_v2_1.0_224.tgz", "w:gz") as tar:
        tar.add(tflite, arcname="./mobilenet_v2_1.0_224.tflite")
        info = b"Model: mobilenet_v2_1.0_224\nInput: input\nOutput: MobilenetV2/Predictions/Reshape_1\n"
        entry = tarfile.TarInfo("./mobilenet_v2_1.0_224_info.txt")
        entry.size = len(info)
        tar.addfile(entry, io.BytesIO(info))
    (root / "broken.tgz").write_bytes((root / "mobilenet_v2_1.0_224.tgz").read_bytes()[:5000])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, tflite
    server.shutdown()
    server.server_close()


def _serve(monkeypatch, url: str, sha256: str | None = None) -> None:
    spec = dataclasses.replace(registry.get_spec("mobilenet_v2_100"), release_url=url, release_sha256=sha256)
    monkeypatch.setitem(registry._REGISTRY, "mobilenet_v2_100", spec)


def test_the_release_tag_downloads_converts_and_caches_once(release_server, tmp_path, monkeypatch, real_images):
    base, root, tflite = release_server
    monkeypatch.setenv("T2TEDGE_CACHE", str(tmp_path / "cache"))
    _serve(monkeypatch, f"{base}/mobilenet_v2_1.0_224.tgz")
    checkpoint = get_pretrained("mobilenet_v2_100.official").checkpoint()
    model = create_model("mobilenet_v2_100", checkpoint=checkpoint)
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(real_images)).numpy()
    assert np.abs(ours - tflite_outputs(tflite, real_images)).max() <= 1e-4
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert cached == ["mobilenet_v2_1.0_224.tgz", "mobilenet_v2_1.0_224.tgz.sha256", checkpoint.name]
    _serve(monkeypatch, "http://127.0.0.1:9/mobilenet_v2_1.0_224.tgz")  # a second use needs no network
    assert fetch_official("mobilenet_v2_100") == checkpoint


def test_a_damaged_download_or_a_wrong_digest_fails_in_one_line_and_keeps_nothing(release_server, tmp_path,
                                                                                  monkeypatch):
    base, root, _ = release_server
    cache = tmp_path / "cache"
    monkeypatch.setenv("T2TEDGE_CACHE", str(cache))
    _serve(monkeypatch, f"{base}/mobilenet_v2_1.0_224.tgz", sha256="0" * 64)
    with pytest.raises(CheckpointError, match="not the 0000000000000000... recorded for mobilenet_v2_100.official"):
        fetch_official("mobilenet_v2_100")
    assert not cache.exists() or not [p for p in cache.iterdir() if not p.name.startswith(".")]
    _serve(monkeypatch, f"{base}/broken.tgz")
    with pytest.raises(CheckpointError, match="was damaged .* and is removed"):
        fetch_official("mobilenet_v2_100")
    assert [p for p in cache.iterdir() if not p.name.startswith(".")] == []


def test_without_the_network_one_line_names_the_tag_and_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("T2TEDGE_CACHE", str(tmp_path / "cache"))
    _serve(monkeypatch, "http://127.0.0.1:9/mobilenet_v2_1.0_224.tgz")  # nothing listens on port 9
    assert main(["export", "onnx", "mobilenet_v2_100.official", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("t2tedge: error: cannot download http://127.0.0.1:9/mobilenet_v2_1.0_224.tgz for "
                          "mobilenet_v2_100.official") and "--checkpoint" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_table4_with_official_weights_measures_the_release(release_server, tmp_path, monkeypatch, val_dir, capsys):
    """`make table4 DATA=...`: every model of the grid takes its MODEL.official release, downloaded once."""
    base, _, _ = release_server
    monkeypatch.setenv("T2TEDGE_CACHE", str(tmp_path / "cache"))
    _serve(monkeypatch, f"{base}/mobilenet_v2_1.0_224.tgz")
    assert main(["table4", "--models", "mobilenet_v2_100", "--runtimes", "onnxruntime", "--precisions", "fp32",
                 "--limit", "2", "--runs", "2", "--data", str(val_dir), "--weights", "official",
                 "--out", str(tmp_path / "t4")]) == 0
    import json

    (cell,) = json.loads((tmp_path / "t4" / "table4.json").read_text())["cells"]
    assert cell["status"] == "measured" and cell["weights"] == "trained"
    assert any(p.name.startswith("mobilenet_v2_100_official_") for p in (tmp_path / "cache").iterdir())
