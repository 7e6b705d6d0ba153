"""``python -m tensorvcs.cli``."""

from . import main

main()
