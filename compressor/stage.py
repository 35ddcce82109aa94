"""The contract between the pipeline and its stages: a context in, a StageResult out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from compressor.artifact import ModelArtifact
from compressor.device_profile import DeviceProfile
from compressor.quant import QuantScheme
from compressor.report import StageReport


@dataclass(frozen=True)
class StageContext:
    """What every stage may read: the target device and the target weight format."""

    profile: DeviceProfile
    scheme: QuantScheme


@dataclass(frozen=True)
class StageResult:
    artifact: ModelArtifact
    report: StageReport


class Stage(Protocol):
    name: str

    def run(self, artifact: ModelArtifact, ctx: StageContext) -> StageResult: ...
