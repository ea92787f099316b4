"""Entry bodies are Markdown: one source gives the HTML part and the plain-text part."""

from __future__ import annotations

import itertools
import re
import textwrap
from collections.abc import Callable, Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from statusmail.content.typography import typeset_tokens

WIDTH = 78

# Inline styles, since many mail clients drop <style> blocks. Links and code may hold
# one long unbreakable string (a 62-character onion address, a mirror URL): they break
# anywhere rather than widen the message past a phone's screen.
_BREAK = "word-break: break-word; overflow-wrap: anywhere;"
_MONO = "font-family: Menlo, Consolas, monospace; font-size: 14px;"
STYLES = {
    "p": "margin: 0 0 16px 0;",
    "a": f"color: #1d4ed8; text-decoration: underline; {_BREAK}",
    "ul": "margin: 0 0 16px 0; padding-left: 24px;",
    "ol": "margin: 0 0 16px 0; padding-left: 24px;",
    "li": "margin: 0 0 6px 0;",
    "h1": "margin: 0 0 12px 0; font-size: 20px; line-height: 1.3;",
    "h2": "margin: 0 0 12px 0; font-size: 18px; line-height: 1.3;",
    "h3": "margin: 0 0 12px 0; font-size: 16px; line-height: 1.3;",
    "blockquote": "margin: 0 0 16px 0; padding-left: 12px; border-left: 3px solid #d1d5db;",
    "code": f"{_MONO} {_BREAK}",
    # the <code> of a code block (inside its <pre>): wraps instead of scrolling
    "pre": f"{_MONO} white-space: pre-wrap; {_BREAK}",
}

# Raw HTML is off: a body or a name can never inject markup. markdown-it refuses
# javascript:, vbscript:, file: and data: links on its own (validateLink).
_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
_md.disable("image")  # no remote images, ever


def parse(source: str, locale: str | None = None) -> list[Token]:
    """The token stream; with ``locale``, set as that language's typography wants."""
    tokens = _md.parse(source)
    if locale is not None:
        typeset_tokens(tokens, locale)
    return tokens


_LINK_TARGET = re.compile(r"\]\(\s*<?([^\s()>]*(?:\([^\s()]*\)[^\s()>]*)*)")


def refused_links(source: str) -> list[str]:
    """Link targets in ``source`` that markdown-it will not render as links."""
    refused = []
    for token in _walk(parse(source)):
        if token.type != "text":
            continue
        for target in _LINK_TARGET.findall(token.content):
            if target and not _md.validateLink(_md.normalizeLink(target)):
                refused.append(target)
    return refused


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:", re.IGNORECASE)


_IMAGE = re.compile(r"(?<!\\)(?:\\\\)*!\[")


def images(source: str) -> list[str]:
    """Image syntax in ``source`` (``![alt](url)``): images are off (no remote content,
    ever), so it renders as a "!" before a link to the image."""
    if not _IMAGE.search(source):  # (``\![x](y)`` is a "!" and a link, as written)
        return []
    found = []
    tokens = _walk(parse(source))
    for before, token in itertools.pairwise(tokens):
        if token.type == "link_open" and before.type == "text" and before.content.endswith("!"):
            found.append(str(token.attrGet("href") or ""))
    return found


def relative_links(source: str) -> list[str]:
    """Link targets in ``source`` with no scheme (``/faq``, ``notice.html``,
    ``www.host/x``, ``//host/x``): a web page resolves them against itself, a message
    has nothing to resolve them against (webmail takes ``//host`` to the host as is)."""
    return [
        str(token.attrGet("href") or "")
        for token in _walk(parse(source))
        if token.type == "link_open" and not _SCHEME.match(str(token.attrGet("href") or ""))
    ]


_ADDRESS = r"(?:[a-z][a-z0-9+.-]*:|www\.)"
# What markdown-it leaves as text although it was meant as a link: a space between the
# label and the address, or an address holding a space.
_SPACED = re.compile(rf"\[[^\[\]\x00]+\][ \t\n]+\({_ADDRESS}[^()\s\x00]*\)", re.IGNORECASE)
_ADDRESS_SPACE = re.compile(
    rf"\[[^\[\]\x00]+\]\({_ADDRESS}[^()\s\x00]*[ \t\n][^()\x00]*\)", re.IGNORECASE
)


_WHITESPACE = re.compile(r"\s+")


def unrendered_links(source: str) -> list[tuple[str, str]]:
    """Link syntax in ``source`` that shows as brackets, not a link: (as written, the
    link as it should be written)."""
    found = []
    for token in _walk(parse(source)):
        if token.type != "inline":
            continue
        # Text as written, softbreaks as newlines; anything else (code, a real link) cuts.
        text = "".join(
            {"text": child.content, "softbreak": "\n"}.get(child.type, "\x00")
            for child in token.children or []
        )
        for match in _SPACED.finditer(text):
            found.append((match[0], re.sub(r"\]\s+\(", "](", match[0])))
        for match in _ADDRESS_SPACE.finditer(text):
            label, _, address = match[0].partition("](")
            found.append((match[0], f"{label}]({_WHITESPACE.sub('%20', address.strip())}"))
    return found


def _walk(tokens: Sequence[Token]) -> list[Token]:
    flat: list[Token] = []
    for token in tokens:
        flat.append(token)
        if token.children:
            flat.extend(_walk(token.children))
    return flat


def to_html(source: str, locale: str | None = None) -> Markup:
    tokens = parse(source, locale)
    for token in _walk(tokens):
        style = STYLES.get("pre" if token.type in ("fence", "code_block") else token.tag)
        if style and token.nesting >= 0:
            token.attrSet("style", style)
    return Markup(_md.renderer.render(tokens, _md.options, {}).strip())


def to_text(
    source: str,
    locale: str | None = None,
    width: int = WIDTH,
    rewrite: Callable[[str], str] | None = None,
) -> str:
    """A plain-text rendering that says what the HTML says: links spelled out, lists kept.
    It wraps at ``width`` only at ordinary spaces, never at a no-break space; ``rewrite``
    (a region's links) goes over each paragraph before it is wrapped, so that a longer
    link does not make a line longer than ``width``."""
    blocks: list[str] = []
    prefix_stack: list[str] = []
    counters: list[int | None] = []  # each open list's next number; None: bullets
    items: list[str] = []  # each open item's indent, for its paragraphs after the first
    pending_prefix = ""
    for token in parse(source, locale):
        if token.type in ("bullet_list_open", "ordered_list_open"):
            start = token.attrGet("start")  # (a list may start at 0)
            counters.append((1 if start is None else int(start)) if token.tag == "ol" else None)
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            counters.pop()
        elif token.type == "list_item_open":
            number = counters[-1] if counters else None
            if number is not None:
                marker = f"{number}. "
                counters[-1] = number + 1
            else:
                marker = "- "
            pending_prefix = "  " * (len(counters) - 1) + marker
            items.append(" " * len(pending_prefix))
        elif token.type == "list_item_close":
            items.pop()
        elif token.type == "blockquote_open":
            prefix_stack.append("> ")
        elif token.type == "blockquote_close":
            prefix_stack.pop()
        elif token.type == "inline":
            text = _inline_text(token.children or [])
            text = rewrite(text) if rewrite is not None else text
            quote = "".join(prefix_stack)
            # an item's later paragraph keeps its indent (flush left, it read as outside
            # the list, where the HTML part shows it inside)
            indent = pending_prefix or (items[-1] if items else "")
            first = quote + indent
            rest = quote + " " * len(indent)
            pending_prefix = ""
            lines = [
                textwrap.fill(
                    part,
                    width=width,
                    initial_indent=first if i == 0 else rest,
                    subsequent_indent=rest,
                    break_long_words=False,
                    break_on_hyphens=False,
                )
                for i, part in enumerate(text.split("\n"))
            ]
            blocks.append("\n".join(lines))
        elif token.type in ("code_block", "fence"):
            code = token.content.rstrip("\n")
            blocks.append(textwrap.indent(rewrite(code) if rewrite else code, "    "))
        elif token.type == "hr":
            blocks.append("-" * 20)
    # Items of one list stay together; other blocks are separated by a blank line.
    out: list[str] = []
    for block in blocks:
        is_item = block.lstrip(" >").startswith(("- ",)) or _numbered(block)
        if out and not (is_item and _is_item(out[-1])):
            out.append("")
        out.append(block)
    return "\n".join(out).strip() + "\n"


def _numbered(block: str) -> bool:
    head = block.lstrip(" >").split(" ", 1)[0]
    return head.endswith(".") and head[:-1].isdigit()


def _is_item(block: str) -> bool:
    return block.lstrip(" >").startswith("- ") or _numbered(block)


# What a link spelled out in plain text cannot hold: a mail client ends the link there.
_ENDS_A_LINK = re.compile(r'[\s<>"`{}|\\^\x00-\x1f\x7f]')


def _typed(href: str) -> str:
    """A link as a reader types it: https://ru.wikipedia.org/wiki/Роскомнадзор, not the
    href's %D0%A0%D0%BE… (109 columns); but as written where decoding it would give a
    space, a quote or a bracket (``Appeal%20of…`` spelled ``Appeal of…`` was linked
    only up to ``Appeal``)."""
    readable = _md.normalizeLinkText(href)
    return href if _ENDS_A_LINK.search(readable) else readable


def _inline_text(children: Sequence[Token]) -> str:
    parts: list[str] = []
    links: list[tuple[str, bool, int]] = []  # href, an autolink, where its label starts
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "link_open":
            links.append((str(child.attrGet("href") or ""), child.markup == "autolink", len(parts)))
            parts.append("")
        elif child.type == "link_close" and links:
            raw, auto, start = links.pop()
            href = _typed(raw)
            if href.startswith("mailto:"):
                href = href[len("mailto:") :]
            elif auto:  # its label is the link, decoded: spelled as the href is
                parts[start:] = [href]
                continue
            label = parts[-1] if parts else ""
            if href and href not in label:
                parts.append(f" <{href}>")
    return "".join(parts)
