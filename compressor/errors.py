"""One error hierarchy for the whole tool, each type mapped to a documented exit code.

The CLI prints ``error: <message>`` for any ``CompressorError`` (no traceback unless ``--debug``) and
exits with ``exit_code``. Messages name the thing that is wrong and what to do next.

Exit codes (also in README.md):

====  =====================================================================
0     success; every budget holds
1     a budget was missed (``check``), or the pipeline stopped because the
      projected or measured footprint cannot fit the device profile
2     command-line usage error (unknown flag, missing argument)
3     bad input: a missing path, a corrupt model file, a malformed profile
      or recipe, an unknown profile name, an unsupported model
4     the output location cannot be written
5     an exported file failed validation in its runtime
6     an optional dependency is missing (the message names the extra)
7     a latency budget looked missed, but the host was busy while measuring
      (other processes used the CPU): re-run on an idle machine
130   interrupted (Ctrl-C); 143: terminated (SIGTERM). Nothing half-written
      is left: the output and its scratch directories are removed
70    internal error (a bug: please report it with ``--debug`` output)
====  =====================================================================
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    BUDGET_MISSED = 1
    USAGE = 2
    BAD_INPUT = 3
    OUTPUT_NOT_WRITABLE = 4
    VALIDATION_FAILED = 5
    MISSING_DEPENDENCY = 6
    MEASUREMENT_UNRELIABLE = 7
    INTERRUPTED = 130
    TERMINATED = 143
    INTERNAL = 70


class CompressorError(Exception):
    """Base class: an error the user can act on. ``problems`` holds every issue found at once."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.message = message
        self.problems = list(problems or [])
        super().__init__(self.render())

    def render(self) -> str:
        if not self.problems:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class InputError(CompressorError):
    """A path, model, profile or recipe given by the user is missing or malformed."""

    exit_code = ExitCode.BAD_INPUT


class ModelLoadError(InputError):
    """The model could not be read (missing files, corrupt weights, unsupported architecture)."""


class ProfileError(InputError):
    """A device profile is unknown or invalid."""


class ConfigError(InputError):
    """A recipe or command-line option combination is invalid."""


class OutputError(CompressorError):
    """The output directory cannot be created or written."""

    exit_code = ExitCode.OUTPUT_NOT_WRITABLE


class ValidationError(CompressorError):
    """An exported file disagrees with the torch model when run in its real runtime."""

    exit_code = ExitCode.VALIDATION_FAILED


class BudgetExceeded(CompressorError):
    """A projected or measured figure misses a device budget; carries the failed checks."""

    exit_code = ExitCode.BUDGET_MISSED


class MissingDependency(CompressorError):
    """An optional package is not installed."""

    exit_code = ExitCode.MISSING_DEPENDENCY


def require(module: str, extra: str):
    """Import an optional heavy dependency, or raise a MissingDependency naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"this step needs the Python package '{module}' ({exc}); "
            f"install it with: pip install -c constraints.txt 'compressor[{extra}]'"
        ) from exc
