"""The public names, pinned: what users import and what processes are started as.

A rename or a removal here breaks users' code or a running master's next spawn, so it must be a
deliberate change to this file too.
"""

from __future__ import annotations

import importlib
import runpy

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

import catalyzer.dispatch
import catalyzer.testing


def test_dispatch_public_names() -> None:
    assert sorted(catalyzer.dispatch.__all__) == [
        "PreforkDispatcher",
        "SerializationError",
        "TaskError",
        "TaskFailed",
        "TaskRequest",
        "TaskResult",
        "describe_all",
        "running",
    ]
    for name in catalyzer.dispatch.__all__:
        assert getattr(catalyzer.dispatch, name) is not None


def test_testing_public_names() -> None:
    assert sorted(catalyzer.testing.__all__) == [
        "FakeProcess",
        "FakeProcessReactor",
        "InMemoryConnection",
        "InMemoryServer",
    ]
    for name in catalyzer.testing.__all__:
        assert getattr(catalyzer.testing, name) is not None


def test_twistd_plugins_name_their_modules() -> None:
    makers = {m.tapname: m for m in getPlugins(IServiceMaker) if m.tapname.startswith("catalyzer")}
    assert sorted(makers) == [
        "catalyzer",
        "catalyzer-dispatch",
        "catalyzer-front",
        "catalyzer-handler",
    ]
    assert makers["catalyzer"].module == "catalyzer.tap"
    assert makers["catalyzer-dispatch"].module == "catalyzer.dispatch.tap"
    assert makers["catalyzer-front"].module == "catalyzer.split.fronttap"
    assert makers["catalyzer-handler"].module == "catalyzer.split.handlertap"
    for maker in makers.values():
        module = importlib.import_module(maker.module)
        assert callable(module.Options)
        assert callable(module.makeService)


@pytest.mark.parametrize(
    "entry", ["catalyzer.prefork.worker", "catalyzer.split.worker", "catalyzer.dispatch.child"]
)
def test_child_entry_modules_have_main(entry: str) -> None:
    """The master and the dispatcher start ``python -m`` these; each has a ``main()``."""
    module = importlib.import_module(entry)
    assert callable(module.main)
    # run as __main__ without its environment, it refuses with a message, not a traceback
    with pytest.raises(SystemExit, match="not by hand"):
        runpy.run_module(entry, run_name="__main__")
