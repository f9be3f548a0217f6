"""``python -m taskbadger.cli``: the ``taskbadger`` console script."""

from . import main

if __name__ == "__main__":
    main()
