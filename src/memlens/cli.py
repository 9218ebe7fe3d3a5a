"""The ``memlens`` command line: a thin shell over the library.

Sub-commands live in :mod:`memlens.commands` and are imported only when used, so ``memlens --version``
and ``memlens --help`` answer without importing torch. Command modules import nothing heavy at module
level (a test enforces this).

Exit codes: 0 success, 1 data or runtime error (a clear message, one line per problem), 2 usage error.
"""

from __future__ import annotations

import errno
import importlib
import logging
import sys

import click

from ._version import __version__

# name -> (module:attribute, one-line help). The help is here so that `memlens --help` imports nothing.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("memlens.commands.check:check", "Validate a data set: report every problem, one line each."),
    "demo": ("memlens.commands.demo:demo", "Generate the synthetic demo set and run the whole pipeline."),
    "train": ("memlens.commands.train:train", "Train an autoencoder (single exposure or pretraining)."),
    "score": ("memlens.commands.score:score", "Per-image reconstruction errors, latents, distinctiveness."),
    "analyze": ("memlens.commands.analyze:analyze", "Correlate the per-image measures with memorability."),
    "fit-predictor": ("memlens.commands.fit_predictor:fit_predictor", "Fit the memorability predictor; its accuracy on images no choice saw."),
    "predict": ("memlens.commands.predict:predict", "Predict memorability for new images (files or folders)."),
    "baselines": ("memlens.commands.baselines:baselines", "Compare the predictor with ResMem, ViTMem and simple baselines."),
    "explain": ("memlens.commands.explain:explain", "Integrated Gradients maps and visual descriptors."),
    "report": ("memlens.commands.report:report", "Write the self-contained HTML report of a run."),
    "run": ("memlens.commands.run:run", "The whole pipeline, from images to a report."),
    "stats": ("memlens.commands.stats:stats", "Correlations with paired bootstrap CIs for any table."),
    "reliability": ("memlens.commands.reliability:reliability", "Split-half consistency of human scores."),
}


class LazyGroup(click.Group):
    """A click group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module_name, attr = spec[0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not implemented in this build
                return None
            raise
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _print_cite(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from ._cite import BIBTEX

    click.echo(BIBTEX, nl=False)
    ctx.exit(0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="memlens", message="%(prog)s %(version)s")
@click.option("--cite", is_flag=True, expose_value=False, is_eager=True, callback=_print_cite,
              help="Print BibTeX for the method and for memlens, then exit.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, warnings only.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def app(ctx: click.Context, debug: bool, quiet: bool, verbose: int) -> None:
    """memlens: model image memorability with autoencoders.

    Every recon_* measure is a distance: higher means a worse reconstruction.
    """
    level = logging.WARNING if quiet else (logging.INFO if verbose == 0 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:  # other libraries' info messages (faiss's loader tries its AVX flavours) only with -vv
        for name in ("faiss", "faiss.loader"):
            logging.getLogger(name).setLevel(logging.WARNING)
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet


#: options of memlens itself that users also type after the command (``memlens score ... -q``)
_GLOBAL_FLAGS = {"-q", "--quiet", "-v", "-vv", "--verbose", "--debug"}


def _globals_first(args: list[str]) -> list[str]:
    """Move memlens's own flags given after the command in front of it (no command defines them)."""
    end = args.index("--") if "--" in args else len(args)
    head = [a for a in args[:end] if a in _GLOBAL_FLAGS]
    return head + [a for a in args[:end] if a not in _GLOBAL_FLAGS] + args[end:]


#: OSError numbers reported as one line naming the path: permission, read-only file system, full disk, quota
_FILE_SYSTEM_ERRNOS = frozenset(getattr(errno, n) for n in ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT")
                                if hasattr(errno, n))


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the CLI and return its exit status."""
    args = _globals_first(sys.argv[1:] if argv is None else list(argv))
    debug = "--debug" in args
    try:
        rv = app.main(args=args, prog_name="memlens", standalone_mode=False)
    except click.ClickException as exc:  # usage errors -> 2
        exc.show()
        return exc.exit_code
    except click.Abort as exc:  # click's form of Ctrl-C, and of any EOFError raised inside a command
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, EOFError):  # e.g. numpy reading an empty or truncated .npy: not an interruption
            if debug:
                raise cause from None
            click.echo(f"error: a file ended unexpectedly: it is empty or truncated (EOFError: {cause}); rerun "
                       "with --debug to see which", err=True)
            return 1
        click.echo("interrupted", err=True)  # the shell's 128 + SIGINT
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:
        from .errors import MemlensError

        if debug:
            raise
        if isinstance(exc, MemlensError):
            for line in exc.lines():
                click.echo(f"error: {line}", err=True)
        elif isinstance(exc, OSError) and exc.errno in _FILE_SYSTEM_ERRNOS:
            # the machine's problem, not memlens's: an unwritable folder, a full or read-only disk
            where = exc.filename if exc.filename is not None else "a file"
            click.echo(f"error: {where}: cannot be written or read ({exc.strerror or exc})", err=True)
        else:
            click.echo(f"error: internal error ({type(exc).__name__}: {exc}); rerun with --debug for the "
                       "traceback and please report it", err=True)
        return 1
    # click returns the exit code of ctx.exit(); a command may also return an int status.
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
