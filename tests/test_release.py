"""Official release checkpoints: downloaded once into the cache, sha256-checked, clear errors offline."""

from __future__ import annotations

import dataclasses

import pytest

from t2tedge.errors import CheckpointError, T2TEdgeError
from t2tedge.models import registry
from t2tedge.models.release import fetch_official


@pytest.fixture
def served_release(tmp_path, monkeypatch):
    """t2t_vit_7's release URL pointed at a local file:// copy, with the cache in tmp_path."""
    source = tmp_path / "server" / "71.7_T2T_ViT_7.pth.tar"
    source.parent.mkdir()
    source.write_bytes(b"release bytes")
    monkeypatch.setenv("T2TEDGE_CACHE", str(tmp_path / "cache"))
    spec = dataclasses.replace(registry.get_spec("t2t_vit_7"), release_url=source.as_uri())
    monkeypatch.setitem(registry._REGISTRY, "t2t_vit_7", spec)
    return source


def test_download_is_cached_and_its_digest_recorded(served_release, tmp_path):
    first = fetch_official("t2t_vit_7")
    assert first.read_bytes() == b"release bytes" and first.parent == tmp_path / "cache"
    served_release.unlink()  # a second call must not need the network
    assert fetch_official("t2t_vit_7") == first
    first.write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="sha256"):
        fetch_official("t2t_vit_7")


def test_pinned_digest_must_match(served_release, monkeypatch, tmp_path):
    spec = dataclasses.replace(registry.get_spec("t2t_vit_7"), release_sha256="0" * 64)
    monkeypatch.setitem(registry._REGISTRY, "t2t_vit_7", spec)
    with pytest.raises(CheckpointError, match="not the 0000000000000000... recorded for t2t_vit_7.official; nothing "
                                              "was kept"):
        fetch_official("t2t_vit_7")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]


def test_unreachable_url_names_it_and_the_alternatives(served_release, tmp_path):
    served_release.unlink()
    with pytest.raises(T2TEdgeError, match="cannot download file://.*CHECKPOINT=.*WEIGHTS=random"):
        fetch_official("t2t_vit_7")
    assert not any((tmp_path / "cache").glob("*.tar"))


def test_models_without_a_release_say_so(monkeypatch):
    spec = dataclasses.replace(registry.get_spec("t2t_vit_10"), release_url=None)
    monkeypatch.setitem(registry._REGISTRY, "t2t_vit_10", spec)
    with pytest.raises(T2TEdgeError, match="no official release"):
        fetch_official("t2t_vit_10")
