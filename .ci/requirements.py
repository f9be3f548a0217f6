"""Print what installing this project with the given extras asks for, one requirement per line.

CI prepares its second virtualenv (Python 3.12) in the background while the first leg runs: it installs these
requirements there first, and the project itself (`pip install --no-deps -e .`) only when the first leg is done.
Two editable installs of one tree at once would race on the tree's egg-info.

    python .ci/requirements.py dev
"""

import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import tomllib

PROJECT = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
# an extra that names the project itself, e.g. "django-taskbadger[django,cli]", stands for those extras' lists
SELF = re.compile(rf"{re.escape(PROJECT['name'])}\[(?P<extras>[^\]]+)\]")


def expanded(requirements: Iterable[str]) -> Iterator[str]:
    for requirement in requirements:
        if match := SELF.fullmatch(requirement.strip()):
            for extra in match["extras"].split(","):
                yield from expanded(EXTRAS[extra.strip()])
        else:
            yield requirement


if __name__ == "__main__":
    wanted = [*PROJECT["dependencies"], *expanded(r for extra in sys.argv[1:] for r in EXTRAS[extra])]
    print("\n".join(dict.fromkeys(wanted)))
