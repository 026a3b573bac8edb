"""Artifacts are written atomically with the permissions a plain open() gives; cached answers,
ratings and fingerprints are never trusted blindly."""

import json
import os
import stat

import pytest

from alignscope.cache import ResultCache
from alignscope.io import FOLDER_MARKER, InputError, atomic_folder, atomic_write_json, atomic_write_text
from alignscope.models import model_fingerprint


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "a" / "report.md", "x")
        folder = atomic_folder(tmp_path / "model", lambda d: (d / "w").write_text("x"), "model")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


def test_json_artifacts_are_strict_json(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        atomic_write_json(tmp_path / "m.json", {"x": float("nan")})
    assert not (tmp_path / "m.json").exists()


def test_output_paths_that_cannot_be_written_are_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        atomic_write_text(tmp_path / "file" / "under", "x")
    (tmp_path / "dir").mkdir()
    with pytest.raises(InputError, match="is a folder; expected a file path"):
        atomic_write_text(tmp_path / "dir", "x")


def test_a_folder_where_a_cache_entry_should_be_is_a_clear_error(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    key = cache.key("x")
    (tmp_path / "cache" / key[:2] / f"{key}.json").mkdir(parents=True)
    with pytest.raises(InputError, match="a folder where a cache entry should be; remove it"):
        cache.get(key)


def _folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"A" * 64)
    return folder


def test_a_same_size_rewrite_with_its_mtime_restored_changes_the_fingerprint(tmp_path, monkeypatch):
    """Reusing by size and mtime let a retrained model with the same size keep its stale ratings."""
    monkeypatch.setenv("ALIGNSCOPE_CACHE", str(tmp_path / "cache"))
    folder = _folder(tmp_path)
    weights = folder / "model.safetensors"
    first = model_fingerprint(str(folder))
    assert model_fingerprint(str(folder)) == first  # unchanged: the remembered hash
    st = weights.stat()
    with open(weights, "r+b") as f:  # rewritten in place: same inode, same size
        f.write(b"B" * 64)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime put back
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    assert model_fingerprint(str(folder)) != first


@pytest.mark.parametrize("content", ["[]", "{\"stamp\": 3}", "not json"])
def test_a_damaged_fingerprint_record_is_recomputed(tmp_path, monkeypatch, content):
    monkeypatch.setenv("ALIGNSCOPE_CACHE", str(tmp_path / "cache"))
    folder = _folder(tmp_path)
    first = model_fingerprint(str(folder))
    (sidecar,) = (tmp_path / "cache" / "fingerprints").glob("*.json")
    sidecar.write_text(content)
    assert model_fingerprint(str(folder)) == first
    assert json.loads(sidecar.read_text())["fingerprint"] == first  # rewritten


def test_a_folder_is_swapped_in_whole_over_the_old_one_and_over_a_concurrent_writers(tmp_path):
    target = tmp_path / "model"
    atomic_folder(target, lambda d: [(d / n).write_text("old") for n in ("a", "b")], "model")
    reader = open(target / "a")  # a reader of the old folder keeps what it opened

    def ours(d):
        (d / "a").write_text("ours")
        # meanwhile another writer finishes its own folder and swaps it in first
        atomic_folder(target, lambda other: (other / "c").write_text("theirs"), "model")

    atomic_folder(target, ours, "model")
    assert sorted(p.name for p in target.iterdir()) == [FOLDER_MARKER, "a"] and (target / "a").read_text() == "ours"
    assert reader.read() == "old"
    reader.close()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # nothing left aside

    with pytest.raises(RuntimeError):  # a write that fails leaves the last whole folder
        atomic_folder(target, lambda d: ((d / "a").write_text("half"), (_ for _ in ()).throw(RuntimeError())), "model")
    assert (target / "a").read_text() == "ours" and [p.name for p in tmp_path.iterdir()] == ["model"]
