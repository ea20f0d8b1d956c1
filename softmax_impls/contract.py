"""A variant's stability contract: which input families it must survive, and where it must break.

The stability study (bench/stability.py) defines the families; a contract names them by string so that
a variant module never imports the harness. Every family not listed in ``expected_failures`` must pass in
every dtype the variant supports; a listed family must *fail* in the listed dtypes (so a documented
breakdown that silently disappears, or spreads, is caught as well).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

ALL_DTYPES = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Contract:
    # family -> dtype names in which the variant is expected to fail that family.
    expected_failures: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # Allowed max relative error on ordinary inputs, in units of the dtype's unit roundoff, per element.
    ordinary_tolerance_ulps: float = 64.0
    notes: str = ""

    def must_fail(self, family: str, dtype: str) -> bool:
        return dtype in self.expected_failures.get(family, ())
