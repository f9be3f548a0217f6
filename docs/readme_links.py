"""MkDocs hook: README sections included in pages link to `docs/x.md`, which from a page is `x.md`.

The README is read on the forge (links relative to the repository root) and, through
pymdownx.snippets sections, inside the site (links relative to docs/). A preprocessor that runs after
the snippets are inserted rewrites the prefix, so there is one text for both, and
`mkdocs build --strict` still checks every rewritten link and anchor.
"""

import re
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor

_README_DOC_LINK = re.compile(r"\]\(docs/")


class _ReadmeLinks(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        return [_README_DOC_LINK.sub("](", line) for line in lines]


class _ReadmeLinksExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:  # noqa: N802 (Markdown's name)
        # pymdownx.snippets runs at priority 32; lower runs later.
        md.preprocessors.register(_ReadmeLinks(md), "taskbadger_readme_links", 31)


def on_config(config: Any, **_: object) -> Any:
    config.markdown_extensions.append(_ReadmeLinksExtension())
    return config
