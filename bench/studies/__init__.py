"""The studies: each measures variants one way into a run folder (bench.store) and knows no report.

Each study is a package (throughput/, stability/, training/) whose ``command`` module satisfies
:class:`Study`: its name, the tables it writes, its presets, and the two functions the command line calls.
A new study is a package beside these with such a module, and one entry in bench/cli.py's COMMANDS table
(and, to run inside ``softmax-bench all``, a step in bench/studies/all.py). common.py holds what every
study shares (the options, choosing variants, opening the run folder, turning a failure into a status).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, Protocol


class Study(Protocol):
    """What a study's command module provides (module attributes satisfy a Protocol's attributes)."""

    name: str  # the command (softmax-bench NAME)
    tables: tuple[str, ...]  # the tables it writes (bench.store.rows.TABLES)
    presets: Mapping[str, Any]  # its named presets
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
