"""Commands that list and inspect what plugins registered.

``invkit plugins``, and ``invkit {teachers,priors,schedules,verifiers,methods} {list,show}``,
all with ``--json`` for scripts.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import click
from rich.console import Console
from rich.table import Table

from invkit.methods import MethodOption, method_options
from invkit.plugins import describe_plugins
from invkit.registry import registry
from invkit.specs import Option


@dataclass(frozen=True)
class Column:
    """One column of a listing: its header and how to read it from a record.

    ``wrap=False`` keeps short values (names, sizes) on one line when the table must
    shrink to fit a narrow terminal; the wrapping columns (summaries) fold instead.
    """

    header: str
    value: Callable[[object], object]
    wrap: bool = True


def _options(record) -> str:
    return ", ".join(o.name for o in getattr(record, "options", ())) or "-"


def _maybe(value) -> str:
    return "-" if value is None else str(value)


#: The plugin name of invkit's own teachers (their source says more: bundled, torchvision...).
BUILTIN_TEACHERS = "invkit.teachers"


def teacher_source(record) -> str:
    """Where a teacher comes from: the built-in source (bundled, torchvision, cifar, nvidia,
    timm) or, for a plugin's teacher, the plugin's name."""
    if record.provider in ("", BUILTIN_TEACHERS):
        return record.source or "-"
    return record.provider


def yes_no(value: bool | None) -> str:
    return "?" if value is None else "yes" if value else "no"


def natural_key(name: str) -> list:
    """Sort key putting ``resnet18`` before ``resnet101`` (numbers compared as numbers)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", name) if part]


NAME = Column("name", lambda r: r.name)
PROVIDER = Column("provider", lambda r: r.provider)
SUMMARY = Column("summary", lambda r: r.summary)

COLUMNS: dict[str, tuple[Column, ...]] = {
    "teacher": (Column("name", lambda r: r.name, wrap=False),
                Column("source", teacher_source, wrap=False),
                Column("input", lambda r: _maybe(r.input_size), wrap=False),
                Column("classes", lambda r: _maybe(r.num_classes), wrap=False),
                Column("BN", lambda r: yes_no(r.batchnorm), wrap=False), SUMMARY),
    "prior": (NAME, Column("weight", lambda r: f"{r.default_weight:g}"),
              Column("options", _options), PROVIDER, SUMMARY),
    "schedule": (NAME, Column("kind", lambda r: r.kind), Column("options", _options),
                 PROVIDER, SUMMARY),
    "verifier": (NAME, Column("options", _options), PROVIDER, SUMMARY),
    "method": (NAME, Column("default priors", lambda r: ", ".join(r.default_priors) or "-"),
               PROVIDER, SUMMARY),
}

CAPTIONS = {
    "verifier": "The network behind a verifier is any teacher spec "
                "(--verifier-arch NAME): see 'invkit teachers list'.",
    "teacher": "BN: has BatchNorm layers (what DeepInversion's statistics prior needs; ? = "
               "known once built: 'invkit teachers show NAME'). timm models: --include "
               "'timm:PATTERN'.",
}


def list_records(kind: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> list:
    """The registered records of ``kind`` matching the patterns; for teachers, in natural
    order and with the timm classifiers when an include pattern starts with ``timm:``
    (there are over 1,000: they are listed only when asked for)."""
    records = registry(kind).list(include=include or None, exclude=exclude or None)
    if kind != "teacher":
        return records
    timm_patterns = [p for p in include if p.startswith("timm:")]
    if timm_patterns:
        from invkit.teachers import timm_models

        records += timm_models.teacher_specs(include=timm_patterns, exclude=exclude)
    return sorted(records, key=lambda r: natural_key(r.name))


def find_record(kind: str, name: str):
    """One record by name; teachers also by spec (``torchvision:NAME``, ``timm:NAME``),
    with BatchNorm looked up where the listing leaves it unknown."""
    if kind == "teacher":
        from invkit.errors import InvkitError
        from invkit.teachers import find_teacher

        record = find_teacher(name)
        if record is None:
            raise InvkitError(f"{name} is a file, not a teacher name: 'invkit teachers show' "
                              "takes a name from 'invkit teachers list'")
        return record
    return registry(kind).get(name)


def record_dict(record) -> dict:
    """A JSON-ready view of a spec record (callables left out, options spelled out).

    A method's options class becomes its option list; a preset's options only the
    values it sets.
    """
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name == "options":
            out[f.name] = [option_dict(o) for o in
                           (method_options(value) if not isinstance(value, tuple) else value)]
        elif not callable(value):
            out[f.name] = _plain(value)
    return out


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if not any(f.metadata for f in dataclasses.fields(value)):
            return {k: _plain(v) for k, v in fields.items() if not callable(v)}
        return {k: _plain(v) for k, v in fields.items() if v is not None}  # options: set ones
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def option_dict(option: Option | MethodOption) -> dict:
    out = {"name": option.name, "type": option.type.__name__, "default": option.default,
           "help": option.help,
           "choices": list(option.choices) if option.choices is not None else None}
    if isinstance(option, MethodOption):
        out["flags"] = list(option.flags) or [f"--{option.name.replace('_', '-')}"]
    return out


def console(fit_terminal: bool = False) -> Console:
    """Wide enough that tables are readable in logs and pipes, not only in terminals;
    ``fit_terminal``: a terminal's own width (the table folds its summaries to fit)."""
    plain = Console()
    if fit_terminal and plain.is_terminal:
        return Console(width=plain.width, highlight=False)
    return Console(width=max(plain.width, 120), highlight=False)


#: Listings whose tables fit the terminal (they keep names whole and fold summaries).
FIT_TERMINAL = {"teacher"}


def make_table(title: str, columns: tuple[Column, ...], records,
               caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption, title_justify="left")
    for column in columns:
        table.add_column(column.header, overflow="fold", no_wrap=not column.wrap)
    for record in records:
        table.add_row(*(str(column.value(record)) for column in columns))
    return table


def print_table(title: str, columns: tuple[Column, ...], records, caption: str | None = None,
                fit_terminal: bool = False):
    console(fit_terminal).print(make_table(title, columns, records, caption))


def make_kind_group(kind: str) -> click.Group:
    """``invkit <kind>s list|show`` for one kind of record."""
    plural = f"{kind}s"

    @click.group(name=plural, help=f"List and inspect registered {plural}.")
    def group():
        pass

    @group.command(name="list", help=f"List registered {plural}.")
    @click.option("--include", multiple=True, metavar="PATTERN",
                  help="Only names matching this shell pattern (repeatable), e.g. 'resnet*'.")
    @click.option("--exclude", multiple=True, metavar="PATTERN",
                  help="Leave out names matching this shell pattern (repeatable).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def list_command(include, exclude, as_json):
        records = list_records(kind, include, exclude)
        if as_json:
            click.echo(json.dumps([record_dict(r) for r in records], indent=2))
            return
        caption = CAPTIONS.get(kind, "")
        if include or exclude:
            caption = f"{len(records)} matching. {caption}".strip()
        print_table(f"{plural} ({len(records)})", COLUMNS[kind], records, caption or None,
                    fit_terminal=kind in FIT_TERMINAL)

    @group.command(name="show", help=f"Show one {kind}: its options, defaults and provider.")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    def show_command(name, as_json):
        record = find_record(kind, name)
        if as_json:
            click.echo(json.dumps(record_dict(record), indent=2))
            return
        show_record(kind, record)

    return group


def show_record(kind: str, record) -> None:
    out = console()
    out.print(f"[bold]{record.name}[/bold]  ({kind} from plugin {record.provider!r})")
    out.print(record.summary)
    if kind == "method":
        show_method(out, record)
        return
    for key, value in record_dict(record).items():
        if key not in ("name", "summary", "provider", "options"):
            out.print(f"  {key}: {value}")
    options = getattr(record, "options", ())
    if options:
        table = Table(title="options", title_justify="left")
        for header in ("option", "type", "default", "choices", "help"):
            table.add_column(header, overflow="fold")
        for o in options:
            choices = ", ".join(map(str, o.choices)) if o.choices else "-"
            table.add_row(o.name, o.type.__name__, repr(o.default), choices, o.help)
        out.print(table)
    elif kind in ("prior", "schedule", "verifier"):
        out.print("  options: none")
    if kind == "prior":
        out.print(f"Use: --prior {record.name}:{record.default_weight:g}"
                  + "".join(f",{o.name}={o.default}" for o in options))


def show_method(out: Console, record) -> None:
    """A method's own options, prior flags, default objective and every preset's values."""
    out.print(f"  default priors: {', '.join(record.default_priors) or '-'}")
    out.print(f"  needs BatchNorm: {'yes' if record.needs_batchnorm else 'no'}")
    table = Table(title="options (besides those every 'invkit run' method has)",
                  title_justify="left")
    for header in ("option", "type", "default", "help"):
        table.add_column(header, overflow="fold")
    for o in method_options(record.options):
        flags = " ".join(o.flags) or f"--{o.name.replace('_', '-')}"
        table.add_row(flags, o.type.__name__, _maybe(o.default), o.help)
    for flag in record.prior_flags:
        target = f"option {flag.option} of {flag.prior}" if flag.option else f"weight of {flag.prior}"
        table.add_row(" ".join(flag.flags), "float", "-", flag.help or f"sets the {target}")
    out.print(table)
    if record.presets:
        presets = Table(title="presets (chosen from the teacher's family, else its size)",
                        title_justify="left")
        for header in ("preset", "for", "bs", "verifier", "priors", "options"):
            presets.add_column(header, overflow="fold")
        for p in record.presets:
            picks = ", ".join(p.families) or "-"
            if p.max_input_size:
                picks += f"; <= {p.max_input_size} px"
            values = _plain(p.options) if p.options is not None else {}
            presets.add_row(p.name, picks, str(p.bs), _maybe(p.verifier),
                            ", ".join(p.priors) or "-",
                            ", ".join(f"{k}={v}" for k, v in values.items()) or "-")
        out.print(presets)


@click.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json):
    """List plugins, their versions and the hooks they implement."""
    rows = describe_plugins()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"plugins ({len(rows)})", title_justify="left")
    for header in ("plugin", "version", "hooks"):
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(row["name"], row["version"], ", ".join(row["hooks"]))
    console().print(table)


def register_listing_commands(cli: click.Group) -> None:
    cli.add_command(plugins_command)
    for kind in COLUMNS:
        cli.add_command(make_kind_group(kind))
