"""What a person sees: the report's index.html opened in headless Chromium, screenshotted, failing if the
page or an image does not load."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import UserError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser_check(report: Path | str, screenshot: Path | str | None = None, timeout: int = 120) -> int:
    """Open report/index.html in headless Chromium, dump the DOM and take a screenshot.

    Fails (returns 1) when the browser cannot load the page, or an <img> is missing, external, or not a
    decodable PNG, or the DOM lacks the report's sections. Run through `make check-report`.
    """
    import matplotlib.image as mpimg

    report = Path(report)
    page = report / "index.html" if report.is_dir() else report
    if not page.is_file():
        raise UserError(f"{page} does not exist; render a report first (softmax-bench report RUN).")
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise UserError("no Chromium found; `make check-report` installs Debian's chromium (as root).")
    shot = Path(screenshot) if screenshot else Path("results") / "check-report" / f"{page.parent.name}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    expected = len(re.findall(r"!\[(?:\\.|[^\]\\])*\]\([^)]+\.png\)", (page.parent / "index.md").read_text())) \
        if (page.parent / "index.md").exists() else None
    with tempfile.TemporaryDirectory(prefix="softmax-bench-chromium-") as profile:
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--hide-scrollbars"]
        url = page.resolve().as_uri()
        dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=timeout)
        snap = subprocess.run(flags + [f"--screenshot={shot.resolve()}", "--window-size=1400,2400", url],
                              capture_output=True, text=True, timeout=timeout)
    errors = []
    if dom.returncode != 0 or "<h1>" not in dom.stdout:
        errors.append(f"the page did not load (exit {dom.returncode}): {dom.stderr.strip()[-500:]}")
    images = re.findall(r"<img\b[^>]*>", dom.stdout)
    for i, tag in enumerate(images, 1):
        src = re.search(r'src="([^"]*)"', tag)
        if not src or not src.group(1).startswith("data:image/png;base64,"):
            errors.append(f"image {i} is not an inlined PNG: {tag[:120]}")
            continue
        try:
            import io

            pixels = mpimg.imread(io.BytesIO(base64.b64decode(src.group(1).split(",", 1)[1])), format="png")
            if pixels.shape[0] < 50 or pixels.shape[1] < 50:
                errors.append(f"image {i} is only {pixels.shape[1]}×{pixels.shape[0]} pixels")
        except Exception as exc:
            errors.append(f"image {i} does not decode as PNG: {exc}")
    if expected is not None and len(images) != expected:
        errors.append(f"index.md links {expected} figures but the page shows {len(images)}")
    if re.search(r'<(?:script|link|img)\b[^>]*(?:src|href)="(?:https?:)?//', dom.stdout):
        errors.append("the page refers to something outside itself")
    if snap.returncode != 0 or not shot.exists() or shot.stat().st_size == 0:
        errors.append(f"no screenshot was written (exit {snap.returncode}): {snap.stderr.strip()[-300:]}")
    for e in errors:
        print(f"check-report: {e}", file=sys.stderr)
    print(f"check-report: {page}: {len(images)} images, {'FAILED' if errors else 'OK'}; screenshot {shot}")
    return 1 if errors else 0


