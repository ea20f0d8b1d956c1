"""softmax-bench: the command line.

    softmax-bench list                       registered variants (and plugins that failed to import)
    softmax-bench train [--variant V ...]    the chapter's softmax regression on Fashion-MNIST
    softmax-bench throughput [--quick]       timing sweeps against the copy-bandwidth roofline
    softmax-bench stability                  adversarial inputs against an mpmath reference
    softmax-bench check VARIANT              one variant against its stability contract (CI gate)
    softmax-bench report RUN [RUN ...]       render run folders into reports/NAME/
    softmax-bench compare BASE NEW           regression gate between two runs
    softmax-bench all [--quick]              the whole study into one run folder, then its report
    softmax-bench recover RUN [--add FILE]   rebuild a lost run.json; put back rows a full disk refused

:data:`COMMANDS` is the table of commands: each entry names the functions that add its options and run it
(each study's command module satisfies bench.studies.Study); this file only wires them. A UserError anywhere
becomes one clear paragraph on stderr and exit status 2. Ctrl-C (exit 130) and SIGTERM (exit 143) stop a study
the same way: every row
written so far stays in the run folder, and the message says how to complete it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bench import UserError
from softmax_impls import UnknownVariantError

Handlers = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


@dataclass(frozen=True)
class Command:
    """One command: its help line, and `load()` -> (add_arguments, run). The import sits inside `load` so a
    study that fails to import (a SyntaxError in a plugin's dependency) costs its own command, not the tool."""

    help: str
    load: Callable[[], Handlers]


def _list() -> Handlers:
    return add_arguments_list, run_list


def _recover() -> Handlers:
    return add_arguments_recover, run_recover


def _train() -> Handlers:
    from bench.studies.training import command
    return command.add_arguments, command.run


def _throughput() -> Handlers:
    from bench.studies.throughput import command
    return command.add_arguments, command.run


def _stability() -> Handlers:
    from bench.studies.stability import command
    return command.add_arguments, command.run


def _check() -> Handlers:
    from bench.studies.stability.contracts import add_arguments_check, run_check
    return add_arguments_check, run_check


def _report() -> Handlers:
    from bench.report.build import add_arguments_report, run_report
    return add_arguments_report, run_report


def _compare() -> Handlers:
    from bench.report.compare import add_arguments_compare, run_compare
    return add_arguments_compare, run_compare


def _all() -> Handlers:
    # the one place a study and the report meet: `all` renders what it measured, and a study never imports
    # the report, so the report's entry points are handed in here
    from bench.report.build import previous_report_files, render
    from bench.studies.all import Report, add_arguments_all, run_all
    return add_arguments_all, functools.partial(run_all, report=Report(previous_report_files, render))


COMMANDS: dict[str, Command] = {
    "list": Command("list the registered variants and any plugin that failed to import", _list),
    "train": Command("train the chapter's softmax regression on Fashion-MNIST", _train),
    "throughput": Command("time every variant against the device's copy bandwidth", _throughput),
    "stability": Command("overflow/underflow/accuracy against a high-precision reference", _stability),
    "check": Command("check one variant against its stability contract; non-zero on breach", _check),
    "report": Command("render run folders into a report under reports/", _report),
    "compare": Command("compare two runs; non-zero on a regression", _compare),
    "all": Command("run the whole study into one run folder and render its report", _all),
    "recover": Command("rebuild a lost or damaged run.json from a run's tables; put back rows a full disk refused",
                       _recover),
}


def add_arguments_list(parser: argparse.ArgumentParser) -> None:
    pass


def run_list(args: argparse.Namespace) -> int:
    import softmax_impls

    for variant in softmax_impls.all_variants():
        print(f"{variant.name:16s} {'/'.join(variant.devices):9s} {variant.summary}")
    broken = softmax_impls.broken()
    for plugin in broken.values():
        print(f"{plugin.name:16s} BROKEN    {plugin.target}: {plugin.error}")
    for conflict in softmax_impls.conflicts().values():
        label = "REJECTED" if conflict.kept is not None else "CONFLICT"
        print(f"{conflict.name:16s} {label:9s} {conflict.describe()}")
    return 0


def add_arguments_recover(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="the run folder (results/<UTC timestamp>-<host>/)")
    parser.add_argument("--add", action="append", default=[], metavar="FILE",
                        help="a file of rows a failed write saved elsewhere (the error names it); repeatable")


def run_recover(args: argparse.Namespace) -> int:
    """Rebuild run.json from the tables when it is lost, damaged or incomplete, and append --add files."""
    from bench.store.recover import recover

    for line in recover(args.run, args.add):
        print(line)
    return 0


def fail(message: str, code: int = 2) -> int:
    width = 100
    # Paths and names must survive a copy-paste: never split them at a hyphen or mid-word.
    lines = textwrap.wrap("softmax-bench: " + message, width, break_long_words=False, break_on_hyphens=False)
    print("\n".join(lines), file=sys.stderr)
    return code


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handlers | Exception]]:
    parser = argparse.ArgumentParser(prog="softmax-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Handlers | Exception] = {}
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        try:
            add_arguments, run = command.load()
            add_arguments(p)
            handlers[name] = (add_arguments, run)
        except Exception as exc:  # noqa: BLE001 - a SyntaxError in one study must not hide the others
            # One missing study must not take the whole tool down; the command reports why when used.
            handlers[name] = exc
    return parser, handlers


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a job scheduler, a CI timeout): unwinds like Ctrl-C, so every study keeps what it wrote
    and no handler meant for a variant's errors mistakes it for one."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (main() called from an app's worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# OSErrors that come from the machine (full disk, permissions), not from a bug: one paragraph, no traceback.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def main(argv: list[str] | None = None) -> int:
    with _sigterm_unwinds():
        try:
            return _dispatch(argv)
        except (UserError, UnknownVariantError) as exc:
            return fail(str(exc))
        except KeyboardInterrupt as exc:
            how, code = ("stopped by SIGTERM", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
            return fail(f"{how}; every row measured so far is saved in the run folder (use --resume RUN).", code)
        except BrokenPipeError:  # `softmax-bench list | head`: the reader left; nothing to say
            with contextlib.suppress(OSError, ValueError):  # so the exit's flush does not fail again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except OSError as exc:
            if exc.errno not in ENVIRONMENT_ERRNOS:
                raise  # a genuine bug stays visible
            where = f" ({exc.filename})" if exc.filename else ""
            return fail(f"{exc.strerror or exc}{where}. Free space or fix the permissions, then run the command "
                        f"again; a study keeps every row it wrote (complete it with --resume RUN).")


def _dispatch(argv: list[str] | None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = handlers[args.command]
    if isinstance(handler, Exception):
        return fail(f"the '{args.command}' command is not available in this installation: {handler}")
    return int(handler[1](args) or 0)


if __name__ == "__main__":
    sys.exit(main())
