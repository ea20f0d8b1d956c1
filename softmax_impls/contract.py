"""A variant's stability contract: which input families it must survive, and where it must break.

The stability study (bench/families.py) defines the families; a contract names them by string so that a
variant module never imports the harness. The rule, checked by tests/test_contracts.py and by
``softmax-bench check VARIANT`` on the 'check' preset:

* every (family, dtype) not listed in ``expected_failures`` must pass: every parameter, row length and op
  (softmax, log_softmax, cross_entropy, its gradient) finite where the 50-digit reference is finite, nan
  where it is nan, and within ``ordinary_tolerance_ulps`` units of the dtype's unit roundoff u;
* every listed (family, dtype) must *fail* somewhere, so a documented breakdown that silently disappears
  (the contract is stale) or spreads to a new dtype is caught as well.

    Contract(expected_failures={"far_target": ALL_DTYPES, "wide_rows": ("float16",)})

A family or dtype name that does not exist is itself a breach (a typo must not weaken a contract).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ALL_DTYPES = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Contract:
    # family -> dtype names in which the variant is expected to fail that family.
    expected_failures: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # Allowed error in units of the dtype's unit roundoff u (eps / 2), relative, with the scaling that
    # bench/stability.py documents (probabilities get (1 + |ln p|), Blanchard-Higham-Higham's exp factor).
    ordinary_tolerance_ulps: float = 64.0
    notes: str = ""

    def __post_init__(self) -> None:
        # freeze a plain dict passed by the variant, and accept a single dtype string by mistake-proofing it
        frozen = {fam: (dts,) if isinstance(dts, str) else tuple(dts) for fam, dts in self.expected_failures.items()}
        object.__setattr__(self, "expected_failures", MappingProxyType(frozen))
        if not self.ordinary_tolerance_ulps > 0:
            raise ValueError(f"ordinary_tolerance_ulps must be positive, not {self.ordinary_tolerance_ulps!r}")

    def must_fail(self, family: str, dtype: str) -> bool:
        return dtype in self.expected_failures.get(family, ())
