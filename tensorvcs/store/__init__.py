"""Storage: a small byte-store interface, a local-directory backend, the object store on top."""

from .base import Store
from .local import LocalStore
from .open import is_url, open_store

__all__ = ["LocalStore", "Store", "is_url", "open_store"]
