"""The ``onnx-amp`` command line.

Subcommands are discovered: every module ``onnx_amp.tools.cmd_<name>`` that defines
``register(subparsers)`` adds its parser there and sets ``func`` (``parser.set_defaults(func=handler)``);
the handler takes the parsed ``argparse.Namespace`` and returns an int exit code.

Errors: an ``OnnxAmpError`` (the user can fix it) and the failures ``core.errors.describe`` knows
(files, memory, ONNX Runtime, the solver) print one line ``onnx-amp: error: <msg>`` and exit 2;
anything else prints one line naming the exception and where it was raised, and exits 1.
``--debug`` (or ``ONNX_AMP_DEBUG=1``) prints the full traceback instead. Ctrl-C, at any moment,
imports included, prints ``onnx-amp: interrupted`` and exits 130 (except in the first ~50 ms of the
process, the interpreter's own start-up before any onnx-amp code runs, where Python reacts itself).

This module imports only the standard library at the top, so that even an interrupt during the
heavy imports (onnx, torch) is caught by :func:`main`. Until :func:`main` runs the command, Ctrl-C
ends the process at once with that one line (nothing has been written yet); from then on it raises
``KeyboardInterrupt``, so every output being staged is removed on the way out.

Usage errors (a missing argument, a bad number) are one line too: ``onnx-amp: error: <what>; see
onnx-amp COMMAND --help``, exit 2. Numbers from flags are checked by the argparse types below
(:func:`number`: finite, in range).
"""

from __future__ import annotations

import signal
import sys

PROG = "onnx-amp"


def _interrupted_early(signum, frame):  # pragma: no cover (exercised in a subprocess)
    import os

    try:
        sys.stderr.write(f"{PROG}: interrupted\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


#: True in a process started as the command line (``onnx-amp``, ``python -m onnx_amp.tools.cli``),
#: not when another program imports this module and calls :func:`main`
_CLI_PROCESS = __name__ == "__main__" or sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] == PROG
if _CLI_PROCESS:
    try:
        signal.signal(signal.SIGINT, _interrupted_early)
    except ValueError:  # not the main thread
        pass

import argparse  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``onnx-amp: error: ...``), exit 2."""

    def error(self, message):
        sys.stderr.write(f"{PROG}: error: {message}; see {self.prog} --help\n")
        raise SystemExit(2)


def number(kind=float, minimum=None, maximum=None, above=None):
    """An argparse ``type``: a finite ``kind`` (int or float) within the bounds (``above``: strictly)."""

    def parse(text: str):
        try:
            v = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {'whole number' if kind is int else 'number'}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
        if minimum is not None and v < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: must be >= {minimum}")
        if above is not None and not v > above:
            raise argparse.ArgumentTypeError(f"{text!r}: must be > {above}")
        if maximum is not None and v > maximum:
            raise argparse.ArgumentTypeError(f"{text!r}: must be <= {maximum}")
        return v

    parse.__name__ = "number"
    return parse


#: the losses ``--loss`` names (``runtime.losses``); ``module:function`` imports a callable(output, batch) -> [B]
LOSSES = ("auto", "causal_lm", "classification", "output_mse")


def loss_name(text: str) -> str:
    """An argparse ``type`` for ``--loss``: one of :data:`LOSSES` or ``module:function``."""
    if text in LOSSES or (":" in text and all(part.strip() for part in text.split(":", 1))):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: use one of {', '.join(LOSSES)} or module:function "
                                     "(a callable(output, batch) -> per-sample loss [B])")


def add_loss_flags(p) -> None:
    """``--loss`` and ``--loss_output``, the same on every subcommand that runs the loss."""
    p.add_argument("--loss", default="auto", type=loss_name, metavar="LOSS",
                   help=f"per-sample loss: {', '.join(LOSSES)} or module:function (default: auto, detected "
                        "from the model's outputs; a calibrated model's own loss in later stages)")
    p.add_argument("--loss_output", default=None, metavar="NAME",
                   help="graph output the loss reads (default: detected)")


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

    parser = _Parser(
        prog=PROG,
        description="Automatic mixed precision for ONNX: export, partition, calibrate, plan and rewrite.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an error (also ONNX_AMP_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _discover(sub)
    return parser


def _interrupts_raise() -> None:
    """From here on Ctrl-C raises ``KeyboardInterrupt`` (staged outputs are removed on the way out)."""
    try:
        if signal.getsignal(signal.SIGINT) is _interrupted_early:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        pass


def _ignore_interrupts() -> None:
    if not _CLI_PROCESS:
        return
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        pass


class _DeferredLog:
    """Log records (``logging`` warnings and Python ``warnings``) held back while a command runs:
    on success onnx-amp's own are printed (``onnx-amp: warning: ...``), on failure none, so an error
    stays one line. ``--debug`` prints everything as it happens."""

    def __init__(self, debug: bool):
        import logging

        self.debug = debug
        self.records: list = []
        self.root = logging.getLogger()
        self.handler = logging.Handler(level=logging.WARNING)
        self.handler.emit = self.records.append
        self.saved = (self.root.handlers[:], self.root.level)

    def __enter__(self):
        import logging

        if not self.debug:
            self.root.handlers[:] = [self.handler]
            logging.captureWarnings(True)
        return self

    def __exit__(self, *exc):
        import logging

        if not self.debug:
            logging.captureWarnings(False)
            self.root.handlers[:] = self.saved[0]
        return False

    def flush(self) -> None:
        for r in self.records:
            if r.name.startswith("onnx_amp"):
                try:
                    msg = " ".join(r.getMessage().split())
                except Exception:  # noqa: BLE001 (a malformed record is not worth a failure)
                    continue
                print(f"{PROG}: warning: {msg}", file=sys.stderr)
        self.records.clear()


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
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version, or a usage error (already said in one line)
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return 2
        _interrupts_raise()
        with _DeferredLog(debug) as log:
            rc = int(func(args) or 0)
        log.flush()
        return rc
    except KeyboardInterrupt:
        _ignore_interrupts()  # a second Ctrl-C while we say so changes nothing
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
