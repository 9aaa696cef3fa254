"""A griffe extension for the API reference: the package's docstrings cross-reference in reST roles
(:func:`patch_sweep`, :class:`~interptest.maps.PatchMap`, :mod:`interptest.api`), which Markdown shows as
literal text. Each role becomes an *optional* autorefs cross-reference: a link where the target is on the
site (the reference page documents the public API only), the name in code where it is not (a private helper,
a module the reference leaves out) — so the docstrings stay as they are for readers of the source and for
Sphinx-style tools, and `mkdocs build --strict` still fails on a Markdown cross-reference that does not
resolve. Configured in mkdocs.yml (plugins: mkdocstrings: handlers: python: options: extensions)."""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj):`(?P<tilde>~?)(?P<target>[\w.]+)`")


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        """Once the package is loaded (every module, its members and their aliases known): each docstring."""
        _rewrite(pkg)


def _rewrite(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = ROLE.sub(lambda m: _autoref(obj, m), obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite(member)


def _autoref(obj: griffe.Object, match: re.Match) -> str:
    target = match.group("target")
    shown = target.rsplit(".", 1)[-1] if match.group("tilde") else target
    return f'<autoref identifier="{_identifier(obj, target)}" optional><code>{shown}</code></autoref>'


def _identifier(obj: griffe.Object, target: str) -> str:
    """The target's full path: as written when it is one (``interptest.…``), else looked up from the
    docstring's module, where a bare name is defined or imported."""
    if target.split(".", 1)[0] == "interptest":
        return target
    module = obj if obj.is_module else obj.module
    head, _, rest = target.partition(".")
    member = module.members.get(head)
    if member is None:
        return f"{module.path}.{target}"
    try:
        path = member.target_path if member.is_alias else member.path
    except Exception:  # an alias griffe cannot resolve: fall back to where the docstring's module has it
        path = f"{module.path}.{head}"
    return f"{path}.{rest}" if rest else path
