"""The ``onnx-amp`` command line.

Subcommands are discovered: every module ``onnx_amp.tools.cmd_<name>`` that defines
``register(subparsers)`` adds its parser there and sets ``func`` (``parser.set_defaults(func=handler)``);
the handler takes the parsed ``argparse.Namespace`` and returns an int exit code.
``OnnxAmpError`` becomes one line ``onnx-amp: error: <msg>`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from onnx_amp import __version__
from onnx_amp.runtime.onnx_io import OnnxAmpError

PROG = "onnx-amp"


def _discover(subparsers) -> list[str]:
    import onnx_amp.tools as tools_pkg

    names = sorted(m.name for m in pkgutil.iter_modules(tools_pkg.__path__) if m.name.startswith("cmd_"))
    loaded = []
    for name in names:
        try:
            mod = importlib.import_module(f"onnx_amp.tools.{name}")
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
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Automatic mixed precision for ONNX: export, partition, calibrate, plan and rewrite.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _discover(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rc = func(args)
    except OnnxAmpError as e:
        msg = " ".join(str(e).split())
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a file-system failure not already turned into an OnnxAmpError
        where = e.filename or "file system"
        print(f"{PROG}: error: {where}: {e.strerror or e}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
