"""``recipe.toml``: the resolved configuration of a run, and how ``--recipe`` replays it.

A recipe is a closed schema: ``[settings]`` is ``config.Settings`` itself (the same fields, defaults
and checks as the command-line flags; an unknown key is an error naming it), pinned to what the run
resolved (the chosen schemes with every tensor's type, the pruning shape, the PTQ method, the
calibration amount, the budgets in force, the tokens distillation trained on). Around it: the hashes
of the model, the profile and the data, checked before a replay does any work.
"""

from __future__ import annotations

import hashlib
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict

from compressor import __version__
from compressor.builtin_models import sha256_file
from compressor.config import CompressRequest, Settings
from compressor.errors import ConfigError, InputError

RECIPE_VERSION = 1


class DataFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str  # a file the run read, or "builtin:<name>" / "teacher:<seed>"
    sha256: str = ""


class Recipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    recipe_version: Literal[1] = 1
    tool_version: str = __version__
    written: str = ""  # UTC time, informational
    chosen_by: str = ""  # "flags", or what the search chose and why
    model_sha256: str
    profile_sha256: str
    data: list[DataFile] = []
    settings: Settings


def sha256_source(path: Path) -> str:
    """A model file's sha256, or for a directory the sha256 over its files' names and sha256s."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.is_symlink()):
        h.update(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def profile_sha256(device: str) -> str:
    from compressor.device_profile import load_profile

    prof = load_profile(device)
    text = prof.model_dump_json(exclude={"source_path"})
    return hashlib.sha256(text.encode()).hexdigest()


def data_files(settings: Settings) -> list[DataFile]:
    if settings.calib_data:
        return [DataFile(path=str(p), sha256=sha256_file(Path(p))) for p in settings.calib_data]
    if settings.calib_text == "teacher":
        return [DataFile(path=f"teacher:{settings.seed}")]
    from importlib import resources

    from compressor.textdata import GENERAL_TEXT

    with resources.as_file(resources.files("compressor.data") / GENERAL_TEXT) as path:
        return [DataFile(path=f"builtin:{GENERAL_TEXT}", sha256=sha256_file(path))]


def model_sha256(model: str) -> str:
    from compressor.loading import resolve_source

    return sha256_source(Path(resolve_source(model).path))


def build(settings: Settings, chosen_by: str) -> Recipe:
    return Recipe(
        written=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        chosen_by=chosen_by,
        model_sha256=model_sha256(settings.model),
        profile_sha256=profile_sha256(settings.device),
        data=data_files(settings),
        settings=settings,
    )


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def dumps(recipe: Recipe) -> str:
    import tomli_w

    head = (
        "# compressor recipe: the resolved configuration of one run.\n"
        "# Replay it: compressor compress --recipe recipe.toml --out DIR\n"
    )
    data = _plain(recipe.model_dump(mode="python"))
    settings = data.pop("settings")
    return head + tomli_w.dumps({**data, "settings": settings})


def load(path: Path) -> Recipe:
    """Read and validate ``path``; every problem names its key."""
    from compressor.paths import unreachable

    if (why := unreachable(path)) is not None or not path.is_file():
        raise InputError(f"recipe {path} {why or 'is not a file'}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"recipe {path} is not valid TOML: {exc}") from None
    try:
        return Recipe.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(f"{key}: {msg}")
        raise ConfigError(f"recipe {path} is not a valid recipe", problems) from None


def verify(recipe: Recipe, path: Path) -> list[str]:
    """Refuse a replay whose model or data differ from the recorded ones; return warnings (a
    changed profile only changes the verdict, and the budgets in force are pinned in the recipe)."""
    have = model_sha256(recipe.settings.model)
    if have != recipe.model_sha256:
        raise InputError(
            f"recipe {path}: model '{recipe.settings.model}' is not the one the recipe was written for "
            f"(sha256 {have[:12]}..., recorded {recipe.model_sha256[:12]}...)"
        )
    for d in recipe.data:
        if d.path.startswith(("builtin:", "teacher:")):
            if d.path.startswith("builtin:") and d.sha256 != data_files(recipe.settings)[0].sha256:
                raise InputError(
                    f"recipe {path}: the built-in sample {d.path} changed since the recipe was written"
                )
            continue
        p = Path(d.path)
        if not p.is_file() or sha256_file(p) != d.sha256:
            raise InputError(f"recipe {path}: data file {p} is missing or differs from the one recorded")
    warnings = []
    if profile_sha256(recipe.settings.device) != recipe.profile_sha256:
        warnings.append(
            f"device profile '{recipe.settings.device}' changed since the recipe was written; the "
            "recipe's budgets are used"
        )
    return warnings


def request(rec: Recipe, **run: Any) -> CompressRequest:
    """The request a replay runs: the recipe's settings plus where to write (``run``)."""
    return CompressRequest(**rec.settings.model_dump(), **run)
