"""Storage backends (DESIGN.md section 5): a metadata store plus a blob store.

Importing this package registers the built-in ``local`` and ``supabase`` backends.
"""

from javia_updates.backends.base import (
    Backend,
    BlobStore,
    Store,
    backend_names,
    create_backend,
    get_backend_class,
    register_backend,
)
from javia_updates.backends.local import LocalBackend
from javia_updates.backends.supabase import SupabaseBackend

__all__ = [
    "Backend",
    "BlobStore",
    "LocalBackend",
    "Store",
    "SupabaseBackend",
    "backend_names",
    "create_backend",
    "get_backend_class",
    "register_backend",
]
