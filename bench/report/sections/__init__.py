"""One module per report section: each reads only the bundle (bench.report.bundle) and adds its blocks
to the document with ``add(doc, bundle, out, palette)``; bench.report.build calls them in order."""

from __future__ import annotations

import re


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "device"


def ordered(values: set[str], preferred: tuple[str, ...]) -> list[str]:
    return [v for v in preferred if v in values] + sorted(values - set(preferred))
