"""The ``effdeploy`` command line: the click group and its console entry point (one-line errors).
Each command lives in ``effdeploy.commands.<name>`` and imports heavy libraries (torch, TensorRT)
only inside its body, so the CLI starts fast on a device."""
from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..errors import EffdeployError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="effdeploy")
def cli() -> None:
    """Build, verify, compile and benchmark EfficientNets for edge targets."""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (e.g. ``Runner.open`` of a ``checked`` bundle) as one plain line."""
    click.echo(f"effdeploy: warning: {message}", err=True)


def usage_error_line(e: click.ClickException) -> str:
    """click's message (it names the option and, for a choice, the valid values) on one line,
    with where to read more."""
    message = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError) and ctx is not None:
        message = message.rstrip(".")
        message += f"{' See' if message.endswith('?') else '; see'} '{ctx.command_path} --help'"
    return message


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    import warnings

    from ..report import attach_cli_output

    attach_cli_output()
    warnings.showwarning = _show_warning
    # FFmpeg (inside OpenCV) prints its own lines for a file it cannot open; our error says it once.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    # torch's OpenMP threads spin between the reconstruction's many small ops; beside any other busy
    # process on the same cores (a second build, a test worker) the spinning starves both. Passive
    # waiting cost a lone 2-core build nothing measurable (docs/int8.md, *Two builds at once*).
    # Read when torch loads, which the build does lazily, after this line; a value the user set stands.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        cli.main(args=argv, prog_name="effdeploy", standalone_mode=False)
    except EffdeployError as e:
        click.echo(f"effdeploy: error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("effdeploy: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("effdeploy: interrupted; nothing was left half-written", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as e:  # bare `effdeploy`: the command list
        e.show()
        sys.exit(e.exit_code)
    except click.ClickException as e:  # click's own usage errors, in the same one-line form
        click.echo(f"effdeploy: error: {usage_error_line(e)}", err=True)
        sys.exit(2 if e.exit_code == 2 else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # a bug, not bad input: still one line unless asked for the traceback
        if os.environ.get("EFFDEPLOY_DEBUG"):
            raise
        click.echo(f"effdeploy: internal error: {type(e).__name__}: {str(e)[:300]} "
                   "(please report it; EFFDEPLOY_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)


def _register() -> None:
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


_register()
