"""Name registries, so that papermill parameters and YAML files can name models, attacks and trainers."""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(LookupError):
    """Raised for a name that no registry entry has; the message lists the known names."""


def _canonical(name: str) -> str:
    # "apgd-ce", "APGD_CE" and "apgd_ce" all name the same attack.
    return name.strip().lower().replace("-", "_")


class Registry(Generic[T]):
    """Maps a short name (``"resnet56"``, ``"pgd"``) to the factory that builds it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, tuple[str, Callable[..., T]]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if _canonical(name) in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[_canonical(name)] = (name, factory)
            return factory

        return decorate

    def names(self) -> list[str]:
        return sorted(display for display, _ in self._factories.values())

    def get(self, name: str) -> Callable[..., T]:
        if not isinstance(name, str) or _canonical(name) not in self._factories:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
            )
        return self._factories[_canonical(name)][1]

    def build(self, name: str, /, **params: Any) -> T:
        return self.get(name)(**params)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _canonical(name) in self._factories
