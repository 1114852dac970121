"""A small name -> component registry (timm's `_registry.py` idea), one per kind of component.

Components are picked by the name a user writes in YAML, so an unknown name must fail with an
error that says which key was wrong and what the user probably meant.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from trainers.errors import InputError, unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to components of one kind ("encoder", "decoder", "attention")."""

    def __init__(self, kind: str, key: str):
        self.kind = kind
        self.key = key  # the config key that names these components, e.g. "model.encoder"
        self._entries: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under each of `names`."""

        def add(entry: T) -> T:
            for name in names:
                if name in self._entries:
                    raise ValueError(f"{self.kind} {name!r} is registered twice")
                self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise InputError(f"{self.key}: {unknown_name(self.kind, name, self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)
