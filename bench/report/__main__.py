"""python -m bench.report check reports/<name>: open a report in headless Chromium (see bench.report.browser)."""

import sys

from bench.report.build import _main

sys.exit(_main(sys.argv[1:]))
