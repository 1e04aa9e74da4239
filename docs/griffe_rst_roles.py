"""A griffe extension for the docs build: the docstrings' reStructuredText roles as Markdown.

latentvi's docstrings name other objects the Sphinx way, ``:class:`~latentvi.inference.LocalGaussians```;
mkdocstrings reads Markdown. This turns each role into a cross-reference when it names a full
``latentvi.`` path (``[`LocalGaussians`][latentvi.inference.LocalGaussians]``), and into inline code
otherwise, and a paragraph's closing ``::`` (reST's literal-block marker) into ``:``. An
``Args:`` entry that documents several parameters at once (``low, high: the action bounds``), which
griffe's Google parser reads as one unknown parameter, becomes one entry per name with the same
text. The docstrings in the source stay as they are.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc):`(~?)([^`<>]+?)`")
LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.MULTILINE)
ARGS_HEADER = re.compile(r"^(\s*)(?:Args|Arguments|Parameters):\s*$")
JOINT_ENTRY = re.compile(r"^(\s+)([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+)(\s*(?:\([^)]*\))?:.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def split_joint_parameters(text: str) -> str:
    """``a, b: text`` in an Args section -> ``a: text`` and ``b: text`` (continuations kept)."""
    lines, out, i = text.splitlines(), [], 0
    section_indent = None
    while i < len(lines):
        line = lines[i]
        header = ARGS_HEADER.match(line)
        if header:
            section_indent = len(header.group(1))
            out.append(line)
            i += 1
            continue
        if section_indent is not None and line.strip() and _indent(line) <= section_indent:
            section_indent = None
        entry = JOINT_ENTRY.match(line) if section_indent is not None else None
        if entry is None:
            out.append(line)
            i += 1
            continue
        indent, names, rest = entry.groups()
        block_end = i + 1
        while block_end < len(lines) and (
            not lines[block_end].strip() or _indent(lines[block_end]) > len(indent)
        ):
            block_end += 1
        while block_end > i + 1 and not lines[block_end - 1].strip():
            block_end -= 1
        for name in (n.strip() for n in names.split(",")):
            out.append(f"{indent}{name}{rest}")
            out.extend(lines[i + 1 : block_end])
        i = block_end
    return "\n".join(out)


def _role(match: re.Match, known) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if target.endswith("()"):
        target = target[:-2]
    shown = target.rsplit(".", 1)[-1] if tilde else target
    if target.startswith("latentvi.") and known(target):
        return f"[`{shown}`][{target}]"
    return f"`{shown}`"


class RstRoles(griffe.Extension):
    """Rewrite reST roles in every docstring once the object tree is complete."""

    def on_package(self, *, pkg, loader, **kwargs) -> None:
        def known(path: str) -> bool:
            """Whether ``path`` gets an anchor in the reference: it exists, is public, and is a
            module or has a docstring (mkdocstrings leaves members without one out)."""
            if any(part.startswith("_") for part in path.split(".")):
                return False
            try:
                target = loader.modules_collection.get_member(path)
                if target.is_alias:
                    target = target.final_target
            except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError):
                return False
            return target.is_module or target.docstring is not None

        def visit(obj, seen) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                text = ROLE.sub(lambda m: _role(m, known), obj.docstring.value)
                text = split_joint_parameters(LITERAL_BLOCK.sub(":", text))
                obj.docstring.value = text
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member, seen)

        visit(pkg, set())
