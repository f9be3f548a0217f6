"""The distribution's version: pyproject.toml reads it from here (a literal, so that ``import taskbadger`` does
not read the installed metadata, which took 8 ms of it)."""

__version__ = "0.1.0"
