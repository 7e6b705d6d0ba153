"""Storage: a small byte-store interface, a local-directory backend, the object store on top."""

from .base import Store
from .local import LocalStore

__all__ = ["LocalStore", "Store"]
