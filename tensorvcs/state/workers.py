"""How many threads the repository's pool runs (Repo.workers unless set). Kept apart from the
writer, which imports torch: a checkout's first use of the pool then imports nothing."""

from __future__ import annotations

import os


def default_workers() -> int:
    """Twice the cores (4 to 16): a job spends part of its time in fsync, not on a core, so
    more jobs than cores keep the cores busy while others wait on the disk."""
    return max(4, min(16, 2 * (os.cpu_count() or 2)))
