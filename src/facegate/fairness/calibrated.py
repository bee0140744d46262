"""Thresholds justified by an audit: the worst group's false-match rate at a threshold, the threshold that keeps
it under a target, and the false candidates a 1:N search should expect in a collection of a given size.

An audit (``report.json`` of `facegate fairness audit`) becomes the active one with `facegate fairness
activate`; it is copied under ``<data>/fairness/audits/<model version>/`` and the policy gate reads it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# A group with fewer impostor pairs than this is too small for its FMR to decide anything: one chance false
# match among a few hundred pairs would make it "the worst group".
MIN_PAIRS = 10_000


@dataclass(frozen=True)
class WorstGroup:
    group: str
    fmr: float


@dataclass(frozen=True)
class AuditCurves:
    """Per-group FMR over a similarity grid (ascending), from one audit."""

    audit_id: str
    model_version: str
    dataset: str
    similarity: np.ndarray
    groups: dict[str, np.ndarray]
    # Measured 1:N false candidates per search per gallery face, per probe group (NaN: not measured there).
    candidates: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_report(cls, report: dict) -> AuditCurves:
        groups, candidates = {}, {}
        for dimension in report["dimensions"]:
            curves = dimension.get("curves") or {}
            for group, fmr in (curves.get("fmr") or {}).items():
                if dimension["groups"].get(group, {}).get("impostor_pairs", 0) >= MIN_PAIRS:
                    groups[f"{dimension['name']}={group}"] = np.asarray(fmr, dtype=np.float64)
                    per_face = (curves.get("candidates_per_face") or {}).get(group)
                    if per_face is not None:
                        candidates[f"{dimension['name']}={group}"] = np.array(
                            [np.nan if v is None else v for v in per_face], dtype=np.float64
                        )
        if not groups:
            raise ValueError("the audit has no group with enough impostor pairs to calibrate thresholds")
        digest = hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()[:16]
        return cls(
            audit_id=digest,
            model_version=report["model"]["version"],
            dataset=report["dataset"]["spec"],
            similarity=np.asarray(report["dimensions"][0]["curves"]["similarity"], dtype=np.float64),
            groups=groups,
            candidates=candidates,
        )

    @classmethod
    def load(cls, path: Path) -> AuditCurves:
        return cls.from_report(json.loads(Path(path).read_text()))

    def worst_group(self, threshold: float) -> WorstGroup:
        """The group with the highest FMR at ``threshold``. The FMR is read at the grid point at or below the
        threshold — FMR falls as similarity rises, so this never understates it."""
        index = max(0, int(np.searchsorted(self.similarity, threshold, side="right")) - 1)
        group = max(self.groups, key=lambda g: self.groups[g][index])
        return WorstGroup(group, float(self.groups[group][index]))

    def threshold_for(self, max_worst_group_fmr: float) -> float | None:
        """The lowest similarity at which every group's FMR is ≤ the target; None if none below 100 does (at 100
        only identical embeddings match, which is no threshold at all)."""
        worst = np.max(np.stack(list(self.groups.values())), axis=0)
        ok = np.nonzero((worst <= max_worst_group_fmr) & (self.similarity < 100.0))[0]
        return float(self.similarity[ok[0]]) if len(ok) else None

    def expected_false_candidates(self, collection_size: int, threshold: float) -> float:
        """False candidates one search should expect: collection size × the worst probe group's measured 1:N
        candidates per gallery face where the audit measured them, else × the worst group's within-group FMR
        (an audit from before 1:N was measured). Read at the grid point at or below the threshold."""
        index = max(0, int(np.searchsorted(self.similarity, threshold, side="right")) - 1)
        measured = [c[index] for c in self.candidates.values() if np.isfinite(c[index])]
        if measured:
            return collection_size * max(measured)
        return collection_size * self.worst_group(threshold).fmr
