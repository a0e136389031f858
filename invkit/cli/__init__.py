"""The ``invkit`` command line: listing commands, ``invkit run METHOD``, plugin commands."""

from __future__ import annotations

import contextlib
import sys
import warnings

import click

from invkit.errors import InvkitError
from invkit.plugins import PluginWarning, get_plugin_manager


@contextlib.contextmanager
def plugin_warnings_as_lines():
    """Show each plugin warning as one ``Warning:`` line on stderr, never as an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", PluginWarning)
        warnings.showwarning = _show_plugin_warning
        yield


class InvkitGroup(click.Group):
    """A group that turns :class:`InvkitError` into one ``Error:`` line and exit code 2."""

    def main(self, *args, **kwargs):
        with plugin_warnings_as_lines():
            return super().main(*args, **kwargs)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InvkitError as error:
            raise _usage_error(error) from None


def _usage_error(error: InvkitError) -> click.ClickException:
    exc = click.ClickException(str(error))
    exc.exit_code = error.exit_code
    return exc


def _show_plugin_warning(message, category, filename, lineno, file=None, line=None):
    # One line, without the source location: the message names the plugin.
    click.echo(f"Warning: {message}", err=True)


class RunGroup(InvkitGroup):
    """``invkit run METHOD``: one subcommand per registered method, built lazily."""

    def _methods(self):
        from invkit.registry import registry

        return registry("method")

    def list_commands(self, ctx):
        return self._methods().names()

    def get_command(self, ctx, name):
        methods = self._methods()
        if name not in methods:
            return None
        from invkit.cli.run import method_command

        return method_command(methods.get(name))

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            from invkit.errors import unknown

            raise _usage_error(unknown("method", name, self.list_commands(ctx)))
        return super().resolve_command(ctx, args)


def make_cli() -> click.Group:
    """Build the command tree: listing commands, ``run``, and every plugin's commands.

    Built fresh on each call (plugins registered in a test show up), e.g.
    ``CliRunner().invoke(make_cli(), ["priors", "list"])``.
    """
    from invkit.cli.listing import register_listing_commands
    from invkit.plugins import call_each

    @click.group(cls=InvkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="invkit", prog_name="invkit")
    def cli():
        """invkit: synthesise images from a trained classifier alone (model inversion).

        \b
        Start with:
          invkit run deepinversion --teacher digits --verifier-arch digits-verifier
          invkit teachers list --include 'resnet*'
          invkit priors list
        """

    @cli.group(cls=RunGroup, context_settings={"help_option_names": ["-h", "--help"]})
    def run():
        """Run an inversion method: every registered method is a subcommand.

        Each method gets the same pipeline (teachers, presets, plans, resume, torchrun,
        progress and output files); 'invkit methods show NAME' lists its own options.
        """

    register_listing_commands(cli)
    # Through pluggy, one plugin at a time: a broken plugin is warned about, not fatal.
    for _ in call_each(get_plugin_manager(), "invkit_commands", consume=lambda r: r, cli=cli):
        pass
    return cli


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    if (sys.argv[1:] if argv is None else list(argv)) == ["--version"]:
        # The answer needs no plugins: skip building the command tree.
        from invkit import __version__

        click.echo(f"invkit, version {__version__}")
        return
    with plugin_warnings_as_lines():
        try:
            cli = make_cli()
        except InvkitError as error:  # e.g. a plugin conflict found while building commands
            click.echo(f"Error: {error}", err=True)
            sys.exit(error.exit_code)
        cli.main(args=argv, prog_name="invkit")
