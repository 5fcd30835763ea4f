"""The ``onnx-amp`` command line.

Subcommands are discovered: every module ``onnx_amp.tools.cmd_<name>`` that defines
``register(subparsers)`` adds its parser there and sets ``func`` (``parser.set_defaults(func=handler)``);
the handler takes the parsed ``argparse.Namespace`` and returns an int exit code.

Errors: an ``OnnxAmpError`` (the user can fix it) and the failures ``core.errors.describe`` knows
(files, memory, ONNX Runtime, the solver) print one line ``onnx-amp: error: <msg>`` and exit 2;
anything else prints one line naming the exception and where it was raised, and exits 1.
``--debug`` (or ``ONNX_AMP_DEBUG=1``) prints the full traceback instead. Ctrl-C, at any moment,
imports included, prints ``onnx-amp: interrupted`` and exits 130.

This module imports only the standard library at the top, so that even an interrupt during the
heavy imports (onnx, torch) is caught by :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import sys

PROG = "onnx-amp"


def _discover(subparsers) -> list[str]:
    import importlib
    import pkgutil

    import onnx_amp.tools as tools_pkg

    names = sorted(m.name for m in pkgutil.iter_modules(tools_pkg.__path__) if m.name.startswith("cmd_"))
    loaded = []
    for name in names:
        try:
            mod = importlib.import_module(f"onnx_amp.tools.{name}")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a broken subcommand must not take the whole CLI down
            print(f"{PROG}: warning: subcommand module {name} failed to import ({type(e).__name__}: {e})",
                  file=sys.stderr)
            continue
        register = getattr(mod, "register", None)
        if callable(register):
            register(subparsers)
            loaded.append(name)
    return loaded


def build_parser() -> argparse.ArgumentParser:
    from onnx_amp import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Automatic mixed precision for ONNX: export, partition, calibrate, plan and rewrite.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an error (also ONNX_AMP_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _discover(sub)
    return parser


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("ONNX_AMP_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    if "--debug" in argv:  # accepted anywhere on the line, not only before the subcommand
        argv = [a for a in argv if a != "--debug"]
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        parser = build_parser()
        args = parser.parse_args(argv)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return 2
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 (the one place every failure becomes one line)
        from onnx_amp.core.errors import describe

        if debug:
            import traceback

            traceback.print_exc()
        msg, expected = describe(e)
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2 if expected else 1


if __name__ == "__main__":
    sys.exit(main())
