"""The one style of posttrain's four registries (generators, methods, suites, engines): a name maps to the dotted
path of the module that implements it, and every module of a kind defines the same names (its ``contract``).

A module is imported when its name is first asked for: a trainer module imports TRL (~10 s cold here), vLLM's engine
imports vLLM (~10 s), and a command needs one of each kind. ``tests/test_registries.py`` imports every entry and
checks its contract, so a reader (or an IDE's "go to") can take each path at its word.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from posttrain.core.errors import UsageError


class Registry:
    """``kind``: what the entries are ("method"); ``modules``: name -> module path; ``contract``: the names each
    module defines."""

    def __init__(self, kind: str, modules: dict[str, str], contract: tuple[str, ...]):
        self.kind, self.modules, self.contract = kind, dict(modules), contract

    def __contains__(self, name: object) -> bool:
        return name in self.modules

    def __iter__(self):
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    def load(self, name: str) -> ModuleType:
        """The module registered as ``name``; an unknown name is a ``UsageError`` listing the known ones."""
        if name not in self.modules:
            raise UsageError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(sorted(self.modules))}")
        return import_module(self.modules[name])
