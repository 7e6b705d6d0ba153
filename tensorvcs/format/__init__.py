"""The on-disk format: ids, the object envelope, codecs, and the manifest and commit encodings.

Everything here is pure (bytes in, bytes out); docs/format.md is its specification.
"""
