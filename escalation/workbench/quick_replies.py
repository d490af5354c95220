"""Quick replies (SPEC R11): the shop's templates picked from a list or typed as ``/`` shortcuts.

What the agent types in the reply box means:

    /               open the template picker
    /2              template number 2 of the picker (1-based, the order ListReplyTemplates returns)
    /ship           the template whose shortcut is ``ship``, or the only one starting with ``ship``
    //text          the text ``/text`` (a leading slash doubled)
    anything else   a text reply

A template's shortcut is its title in lower case with each run of other characters than letters and
digits turned into one ``-`` (``"Ships today!"`` → ``ships-today``); titles in any script keep their
letters (``"已发货"`` → ``已发货``). Two templates with the same shortcut get ``-2``, ``-3`` in list order;
a title with no letter or digit uses its template id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from escalation.v1 import merchant_pb2

_SEPARATORS = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class TextReply:
    text: str


@dataclass(frozen=True)
class TemplateReply:
    template: merchant_pb2.ReplyTemplate


@dataclass(frozen=True)
class OpenPicker:
    pass


@dataclass(frozen=True)
class Unknown:
    """The shortcut matched no template or several; ``message`` says which."""

    message: str


Typed = TextReply | TemplateReply | OpenPicker | Unknown


def slug(title: str) -> str:
    """The shortcut word of a title (module docstring); may be empty."""
    return _SEPARATORS.sub("-", title.casefold()).strip("-")


def shortcuts(templates: list[merchant_pb2.ReplyTemplate]) -> list[tuple[str, merchant_pb2.ReplyTemplate]]:
    """Each template with its unique shortcut, in list order."""
    taken: set[str] = set()
    result = []
    for template in templates:
        base = slug(template.title) or slug(template.template_id) or "template"
        word, n = base, 1
        while word in taken:
            n += 1
            word = f"{base}-{n}"
        taken.add(word)
        result.append((word, template))
    return result


def resolve(typed: str, templates: list[merchant_pb2.ReplyTemplate]) -> Typed:
    """What the reply box's ``typed`` text asks for (module docstring). Pure, total."""
    if not typed.startswith("/"):
        return TextReply(typed)
    if typed.startswith("//"):
        return TextReply(typed[1:])
    word = typed[1:].strip().casefold()
    if not word:
        return OpenPicker()
    pairs = shortcuts(templates)
    if word.isdecimal():
        n = int(word)
        if 1 <= n <= len(pairs):
            return TemplateReply(pairs[n - 1][1])
        return Unknown(f"no template number {n}: there are {len(pairs)}")
    exact = [t for w, t in pairs if w == word]
    if exact:
        return TemplateReply(exact[0])
    starting = [(w, t) for w, t in pairs if w.startswith(word)]
    if len(starting) == 1:
        return TemplateReply(starting[0][1])
    if starting:
        return Unknown(f"/{word} could be " + ", ".join(f"/{w}" for w, _ in starting))
    return Unknown(f"no quick reply /{word}; type / to pick one")
