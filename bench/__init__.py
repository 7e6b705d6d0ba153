"""The tensorvcs benchmark (issue 4): ``make bench`` or ``python bench/run.py``."""
