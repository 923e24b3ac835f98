"""Every option of the task dispatcher, defined once.

:class:`~catalyzer.dispatch.PreforkDispatcher`'s keywords take their defaults and validation from
:data:`SETTINGS`; the ``twistd catalyzer-dispatch`` options (:mod:`catalyzer.dispatch.tap`) are the
:attr:`Setting.option` of those that have one, plus :data:`LISTEN`; and the two option tables of
``docs/dispatch.md`` are generated from both (``make docs``; a test keeps the page in step). So an
option cannot exist in one place and be missing or different in another. Pure: no Twisted.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

DEFAULT_LISTEN = "tcp:7080:interface=127.0.0.1"


def _not_negative(value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError("cannot be negative")


def _module_list(value: Sequence[str]) -> None:
    # A string is a sequence too, and would be searched one letter at a time.
    if isinstance(value, str):
        raise TypeError("is a list of module names, not one string")


def _seconds_or_none(text: str) -> float | None:
    return float(text) or None  # 0 on the command line: no limit


@dataclass(frozen=True)
class Option:
    """A ``twistd catalyzer-dispatch`` option."""

    name: str
    short: str | None
    # As typed on the command line; None: not given unless typed (see ``fallback``).
    default: str | None
    help: str
    metavar: str
    parse: Callable[[str], Any] = str
    # The type named in the error for a value ``parse`` refuses.
    expects: str = "str"
    repeatable: bool = False
    required: bool = False
    # An option left unset takes the value of this one.
    fallback: str | None = None

    def value(self, raw: str) -> Any:
        """``raw`` parsed; ``ValueError`` with the message the command line shows."""
        try:
            return self.parse(raw)
        except ValueError:
            raise ValueError(f"--{self.name} {raw!r}: expected {self.expects}") from None


@dataclass(frozen=True)
class Setting(Generic[T]):
    """A :class:`~catalyzer.dispatch.PreforkDispatcher` keyword: its default, its rule, what the
    docs say of it, and the command-line option that sets it, if any."""

    keyword: str
    default: T
    meaning: str
    check: Callable[[T], None] | None = None
    option: Option | None = None
    # The default as the docs show it, when its repr would say less (``()`` for a list, say).
    shown: str | None = None
    required: bool = False

    def validate(self, value: T) -> None:
        """``ValueError`` or ``TypeError`` naming the keyword, if ``value`` breaks the rule."""
        if self.check is None:
            return
        try:
            self.check(value)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{self.keyword} {e} (got {value!r})") from None


MAX_FORKS = Setting[int](
    "max_forks",
    4,
    "children at most; `0` runs every task at once in this process, **blocking the reactor** "
    "while it runs (no timeout, no isolation: for tests and debugging)",
    _not_negative,
    Option(
        "procs",
        "p",
        "4",
        "Children at most (0: run every task in this process).",
        "N",
        int,
        "int",
    ),
)
PRE_FORK = Setting[int](
    "pre_fork",
    1,
    "children started with the service; the rest start on demand",
    _not_negative,
    Option(
        "pre-fork",
        None,
        None,
        "Children started at once [default: --procs].",
        "N",
        int,
        "int",
        fallback="procs",
    ),
)
SPAWN_DELAY = Setting[float](
    "spawn_delay",
    2.0,
    "seconds between two children started on demand (the seed's 2 s): a burst of tasks grows "
    "the pool by one child per `spawn_delay`",
    _not_negative,
    Option(
        "spawn-delay",
        None,
        "2",
        "Seconds between two children started on demand.",
        "SECONDS",
        float,
        "float",
    ),
)
MAX_REQUESTS = Setting[int](
    "max_requests",
    0,
    "tasks per child before it is replaced (0: never); its replacement starts first, one child "
    "recycles at a time, and the old child takes no more tasks",
    _not_negative,
    Option(
        "max-requests",
        None,
        "0",
        "Replace a child after this many tasks (0: never).",
        "N",
        int,
        "int",
    ),
)
METHODS = Setting[Mapping[str, Any] | None](
    "methods",
    None,
    'name → `"module:function"` or a module-level function',
    shown="{}",
)
# The command line says --methods for the modules searched for methods.
CLASSES_OPTION = Option(
    "methods",
    "m",
    None,
    "A module whose public functions are served (repeatable; searched in order).",
    "MODULE",
    repeatable=True,
    required=True,
)
CLASSES = Setting[Sequence[str]](
    "classes",
    (),
    "module paths searched, in order, for a function of a given name",
    _module_list,
    CLASSES_OPTION,
    shown="[]",
)
UPON_RESULT = Setting[Any](
    "upon_result",
    None,
    "`callback(request, result)` for every result of a task without a callback of its own; "
    "`request` is a `TaskRequest(name, args)`",
)
TIMEOUT = Setting[float | None](
    "timeout",
    None,
    "seconds a task may run in a child (per task: `dispatch(..., timeout=)`)",
    _not_negative,
    Option(
        "timeout",
        "t",
        "0",
        "Kill a child whose task runs longer, in seconds (0: never).",
        "SECONDS",
        _seconds_or_none,
        "float",
    ),
)
STOP_TIMEOUT = Setting[float](
    "stop_timeout",
    10.0,
    "how long `stopService` lets the tasks in hand finish",
    _not_negative,
    Option(
        "stop-timeout",
        None,
        "10",
        "Seconds the tasks in hand get to finish at shutdown.",
        "SECONDS",
        float,
        "float",
    ),
)
FORK_NAME = Setting[str](
    "fork_name",
    "catalyzer dispatch",
    'children\'s process title: `"<fork_name> child"` (with `setproctitle`, the `proctitle` extra)',
    option=Option(
        "fork-name",
        None,
        "catalyzer dispatch",
        "Children's process title: NAME child.",
        "NAME",
    ),
)
VERBOSE = Setting[int](
    "verbose",
    0,
    "0: warnings, errors and children's stderr; 1: also children starting, ready and exiting; "
    "2: also every task (see [Logging](#logging))",
    _not_negative,
    Option(
        "verbose",
        "v",
        "0",
        "1: children starting and stopping; 2: every task.",
        "N",
        int,
        "int",
    ),
)
TALKBACK = Setting[Any](
    "talkback",
    None,
    "`callback(line)` that takes the log lines instead of `twisted.logger` (see "
    "[Logging](#logging))",
)
FORK_PREINIT = Setting[Any](
    "fork_preinit", None, "`hook(slot)` here, before each child is spawned (see [Hooks](#hooks))"
)
FORK_POSTINIT = Setting[Any](
    "fork_postinit",
    None,
    "`hook(slot, pid)` here, after each spawn (see [Hooks](#hooks))",
)
FORK_INIT = Setting[Any](
    "fork_init",
    None,
    "`hook()` in each child, once, before it takes tasks (see [Hooks](#hooks))",
    option=Option(
        "fork-init",
        None,
        None,
        "module:function each child runs once it starts.",
        "MODULE:FUNCTION",
    ),
)
PRECALL = Setting[Any](
    "precall", None, "`hook(target, args)` in the child before each task (see [Hooks](#hooks))"
)
POSTCALL = Setting[Any](
    "postcall", None, "`hook(target, args)` in the child after each task (see [Hooks](#hooks))"
)
ON_HALT = Setting[Any]("on_halt", None, "`callback(reason)` if children cannot start at all")
PYTHON = Setting[str](
    "python",
    sys.executable,
    "the interpreter children are started with",
    shown="sys.executable",
)
REACTOR = Setting[Any](
    "reactor",
    None,
    "a reactor providing `callLater`, `seconds`, `spawnProcess` and `adoptStreamConnection`, as "
    "every POSIX reactor does (typed as `catalyzer.process.reactors.ProcessReactor`)",
    required=True,
)

SETTINGS: tuple[Setting[Any], ...] = (
    MAX_FORKS,
    PRE_FORK,
    SPAWN_DELAY,
    MAX_REQUESTS,
    METHODS,
    CLASSES,
    UPON_RESULT,
    TIMEOUT,
    STOP_TIMEOUT,
    FORK_NAME,
    VERBOSE,
    TALKBACK,
    FORK_PREINIT,
    FORK_POSTINIT,
    FORK_INIT,
    PRECALL,
    POSTCALL,
    ON_HALT,
    PYTHON,
    REACTOR,
)

BY_KEYWORD: Mapping[str, Setting[Any]] = {s.keyword: s for s in SETTINGS}

# Only the command line has it: where the XML-RPC face listens.
LISTEN = Option(
    "listen",
    "l",
    DEFAULT_LISTEN,
    "Endpoint to serve XML-RPC on (loopback by default).",
    "ENDPOINT",
)

# The twistd options, in the docs' order, each with the keyword it sets (None: the tap's own).
OPTIONS: tuple[tuple[Option, str | None], ...] = (
    (LISTEN, None),
    *((s.option, s.keyword) for s in SETTINGS if s.option is not None),
)


def validate(values: Mapping[str, object]) -> None:
    """Check each keyword of :data:`SETTINGS` found in ``values`` against its rule."""
    for setting in SETTINGS:
        if setting.keyword in values:
            setting.validate(values[setting.keyword])


def from_command_line(given: Mapping[str, str | None]) -> dict[str, Any]:
    """The values of the single-valued :data:`OPTIONS`, by option name, from what was typed
    (``given``, None where nothing was): parsed, checked with the keyword's rule, and unset ones
    filled in from their ``fallback``. ``ValueError`` with the message to show."""
    values: dict[str, Any] = {}
    for option, keyword in OPTIONS:
        if option.repeatable:
            continue
        raw = given.get(option.name)
        raw = option.default if raw is None else raw
        if raw is None:
            values[option.name] = None
            continue
        value = option.value(raw)
        check = BY_KEYWORD[keyword].check if keyword is not None else None
        if check is not None:
            try:
                check(value)
            except (ValueError, TypeError) as e:
                raise ValueError(f"--{option.name} {e}") from None
        values[option.name] = value
    for option, _ in OPTIONS:
        if option.fallback is not None and values.get(option.name) is None:
            values[option.name] = values[option.fallback]
    return values


def keywords(values: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~catalyzer.dispatch.PreforkDispatcher` keywords from option values by name."""
    return {
        keyword: values[option.name]
        for option, keyword in OPTIONS
        if keyword is not None and option.name in values
    }


# -- the docs tables

_BLOCK = re.compile(
    r"(<!-- generated from src/catalyzer/dispatch/settings.py: (\w+) -->\n)(.*?)(<!-- end -->)",
    re.DOTALL,
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _shown(setting: Setting[Any]) -> str:
    if setting.required:
        return "(required)"
    if setting.shown is not None:
        return f"`{setting.shown}`"
    if setting.default is None:
        return "None"
    if isinstance(setting.default, str):
        return f'`"{setting.default}"`'
    return f"`{setting.default!r}`"


def render_api(settings: Iterable[Setting[Any]] = SETTINGS) -> str:
    """The ``PreforkDispatcher(...)`` keywords table."""
    lines = ["| option | default | meaning |", "|---|---|---|"]
    lines += [f"| `{s.keyword}` | {_shown(s)} | {_cell(s.meaning)} |" for s in settings]
    return "\n".join(lines) + "\n"


def render_options(options: Iterable[tuple[Option, str | None]] = OPTIONS) -> str:
    """The ``twistd catalyzer-dispatch`` options table."""
    lines = ["| option | default | sets | meaning |", "|---|---|---|---|"]
    for option, keyword in options:
        name = f"`--{option.name} {option.metavar}`"
        if option.short:
            name += f" (`-{option.short}`)"
        if option.required:
            default = "(required)"
        elif option.fallback is not None:
            default = f"`--{option.fallback}`"
        else:
            default = "(none)" if option.default is None else f"`{option.default}`"
        sets = f"`{keyword}`" if keyword else ""
        lines.append(f"| {name} | {default} | {sets} | {_cell(option.help)} |")
    return "\n".join(lines) + "\n"


_RENDERERS: Mapping[str, Callable[[], str]] = {"api": render_api, "options": render_options}


def update_page(page: str) -> str:
    """``page`` (``docs/dispatch.md``) with each generated block replaced by its current text."""

    def block(m: re.Match[str]) -> str:
        return m.group(1) + _RENDERERS[m.group(2)]() + m.group(4)

    return _BLOCK.sub(block, page)


def write_page(path: str | Path) -> None:
    """Rewrite the generated tables of ``path`` (``make docs`` does, for ``docs/dispatch.md``)."""
    page = Path(path)
    page.write_text(update_page(page.read_text()))
