"""A griffe extension of `make docs`: the docstrings' Sphinx markup, made readable in Markdown.

aiopt's docstrings are prose written with Sphinx roles (``:func:`~aiopt_lib.x.y```,
``:class:`Node```) and ``::`` before literal blocks; Markdown would show them as typed. Before
mkdocstrings renders a docstring, this extension rewrites

- each role into a code span linked to the object's section of the API pages: the name is
  resolved the way Python would from the documented object (its members, its module's imports,
  the enclosing scopes; a name re-exported elsewhere links to where it is defined). The link is
  an *optional* cross-reference, so a name that is not on the pages (the standard library,
  polars, a private helper) stays a plain code span instead of a warning of ``--strict``;
- ``text::`` before an indented block into ``text:`` (the block stays a code block), and a
  ``::`` on its own line away.

Only the docstring text seen by mkdocstrings changes; the sources are not touched. mkdocs.yml
loads it as ``extensions: [docs/griffe_sphinx_roles.py]`` of the python handler.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?P<role>func|class|meth|attr|data|mod|exc|obj|const|type):`(?P<body>[^`]+)`"
)
EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")
BEFORE_BLOCK = re.compile(r"(?m)(\S)::[ \t]*\n(?=[ \t]*\n)")
ALONE_BEFORE_BLOCK = re.compile(r"(?m)^[ \t]*::[ \t]*\n(?=[ \t]*\n)")


class SphinxRoles(griffe.Extension):
    """Rewrites the Sphinx roles and ``::`` of every docstring in a loaded package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value, obj, loader)


def rewrite(text: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
    """``text`` with its roles as optional cross-references and its ``::`` as ``:``."""
    text = ALONE_BEFORE_BLOCK.sub("", text)
    text = BEFORE_BLOCK.sub(r"\1:\n", text)
    return ROLE.sub(lambda match: _reference(match["body"], obj, loader), text)


def _reference(body: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
    explicit = EXPLICIT_TITLE.match(body)
    target = (explicit["target"] if explicit else body).strip()
    link = not target.startswith("!")
    target = target.lstrip("!")
    short = target.startswith("~")
    target = target.lstrip("~")
    name = target.lstrip(".")
    if explicit:
        title = explicit["title"]
    elif short:
        title = name.rsplit(".", 1)[-1]
    else:
        title = target
    code = f"<code>{html.escape(title)}</code>"
    if not link:
        return code
    identifier = _resolve(name, obj, loader)
    return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'


def _resolve(name: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
    """The canonical path of ``name`` as seen from ``obj``; ``name`` itself when unknown."""
    head, _, rest = name.partition(".")
    path = name
    if head != obj.package.name:
        try:
            path = obj.resolve(head) + (f".{rest}" if rest else "")
        except (griffe.NameResolutionError, griffe.AliasResolutionError, KeyError):
            return name
    try:
        found = loader.modules_collection[path]
        return found.final_target.path if found.is_alias else found.path
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return path


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)
