"""Backends: a named :class:`Store` plus :class:`BlobStore`, and the registry of names (DESIGN.md section 5).

Implementations register by ``NAME``::

    @register_backend
    class MyBackend(Backend):
        NAME = "mine"

        @classmethod
        def from_settings(cls, settings):
            return cls(MyStore(settings.database_url), MyBlobStore(...))

Built-in backends register on import of :mod:`javia_updates.backends`; others
can do the same from an entry point in the ``javia.backends`` group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from javia_core.errors import BackendError
from javia_updates.backends.store import BlobStore, Store

if TYPE_CHECKING:
    from javia_updates.settings import ServerSettings

__all__ = [
    "Backend",
    "backend_names",
    "create_backend",
    "get_backend_class",
    "register_backend",
]


class Backend(ABC):
    """A named pair of :class:`Store` and :class:`BlobStore`.

    Subclasses set ``NAME`` and implement :meth:`from_settings`.
    """

    NAME: ClassVar[str]

    def __init__(self, store: Store, blobs: BlobStore) -> None:
        self.store = store
        self.blobs = blobs

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: ServerSettings) -> Backend:
        """Build the backend from server settings (does not create the schema)."""

    def prepare(self) -> None:  # noqa: B027 - optional hook: the default needs no preparation
        """Bring storage up to date (run migrations, create directories)."""

    def close(self) -> None:
        """Release connections and files."""
        self.store.close()


_REGISTRY: dict[str, type[Backend]] = {}
_ENTRY_POINT_GROUP = "javia.backends"
_entry_points_loaded = False


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Register a backend class under its ``NAME`` (usable as a class decorator).

    Raises:
        BackendError: ``NAME`` is missing or empty, or already registered by another class.
    """
    name = getattr(cls, "NAME", None)
    if not isinstance(name, str) or not name:
        raise BackendError(f"backend class {cls.__qualname__} has no NAME")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise BackendError(
            f"backend name {name!r} is already registered by {existing.__module__}."
            f"{existing.__qualname__}: choose another NAME"
        )
    _REGISTRY[name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=_ENTRY_POINT_GROUP):
        cls = entry_point.load()
        if _REGISTRY.get(str(getattr(cls, "NAME", ""))) is not cls:
            register_backend(cls)


def backend_names() -> list[str]:
    """Names of every registered backend, sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``.

    Raises:
        BackendError: no backend of that name; the message lists the known ones.
    """
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise BackendError(f"unknown backend {name!r}: expected one of {known}") from None


def create_backend(settings: ServerSettings) -> Backend:
    """Build the backend named by ``settings.backend``.

    Raises:
        BackendError: unknown backend name, or it cannot be opened.
    """
    return get_backend_class(settings.backend).from_settings(settings)
