"""Dry-run previews: per variant an ``.eml``, an ``.html`` and a ``.txt``, and an
``index.html`` gallery a reviewer can approve from.

The gallery shows each variant whole, at desktop and phone width side by side, with its
headers, its plain-text part and its recipient count. Every message is inlined through a
declarative shadow root, which needs no script, keeps the message's styles to itself and
lets the frame grow to the message's full height. Previews are rendered for a made-up
recipient, never a real subscriber, so CI can keep them without keeping anyone's address.
"""

from __future__ import annotations

import email.policy
import html
import re
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from statusmail.content.message import MessageFactory
from statusmail.content.render import Renderer
from statusmail.content.variants import PROBE_ADDRESS as PREVIEW_ADDRESS
from statusmail.content.variants import VariantKey, probe_recipient
from statusmail.domain import Entry, counted
from statusmail.errors import StatusmailError
from statusmail.project.config import Config
from statusmail.project.selection import SelectionStats

PREVIEW_SUFFIXES = (".eml", ".html", ".txt")  # what a dry run writes, and may clear
HEADERS = ("From", "To", "Subject", "List-Unsubscribe", "Content-Language")
DESKTOP_WIDTH = 680
PHONE_WIDTH = 390


@dataclass(frozen=True, slots=True)
class Preview:
    key: VariantKey
    recipients: int
    headers: dict[str, str]
    text: str
    html: str

    def file(self, suffix: str) -> str:
        return f"{self.key.label}{suffix}"


def clear_previews(out_dir: Path) -> None:
    """Remove stale preview files: only ``*.eml``, ``*.html`` and ``*.txt`` directly in
    ``out_dir``, so a variant that no longer exists leaves nothing behind."""
    for path in out_dir.iterdir():
        if path.suffix in PREVIEW_SUFFIXES and (path.is_symlink() or path.is_file()):
            path.unlink()


def preview_keys(
    renderer: Renderer, entry: Entry, stats: SelectionStats
) -> list[tuple[VariantKey, int]]:
    """Every variant the entry can produce (``Renderer.variant_keys``) and any other its
    selected readers fall in (a footer naming two of an entry's three topics), each with
    how many of them get it: by language, regional treatment and the footer's topics."""
    keys = renderer.variant_keys(entry)
    counts: dict[VariantKey, int] = {}
    for (locale, region), n in stats.selected.items():
        key = renderer.variant_key(entry, locale, region, "named")
        counts[key] = counts.get(key, 0) + n
    for (locale, region, topics), n in stats.topics.items():
        own = renderer.variant_key(entry, locale, region, "named")
        key = renderer.variant_key(entry, locale, region, "named", topics)
        counts[own] = counts.get(own, 0) - n
        counts[key] = counts.get(key, 0) + n
    known = set(keys)
    keys += sorted(
        (
            key
            for key, n in counts.items()
            if n and key not in known and replace(key, topics=None) in known
        ),
        key=lambda key: key.label,
    )
    return [(key, counts.get(key, 0)) for key in keys]


def write_previews(factory: MessageFactory, stats: SelectionStats, out_dir: Path) -> list[Path]:
    """The previews of every variant, written into ``out_dir``; a folder that cannot
    be written is a ``StatusmailError`` naming the path."""
    try:
        return _write_previews(factory, stats, out_dir)
    except OSError as exc:
        where = exc.filename or out_dir
        raise StatusmailError(f"{where}: cannot write previews: {exc.strerror or exc}") from exc


SITE_PREVIEW = "site"  # the entry's status site pages, in its preview folder


def preview_folder_problem(config: Config, out_dir: Path) -> str | None:
    """Why previews must not be written into ``out_dir`` (``PREVIEW_DIR/ID``), if so. The
    preview folder and an entry's id come from the change CI previews: a link there
    had the dry run remove and overwrite files of the folder it pointed to, and an entry
    id naming a project folder (``--preview-dir .``, entry ``templates``) had it remove
    the project's own site templates (review)."""
    project = config.path.parent
    # (--preview-dir itself may be a link the operator made, unless it is in the project)
    in_project = out_dir.parent.absolute().is_relative_to(project.absolute())
    for folder in (out_dir.parent if in_project else None, out_dir, out_dir / SITE_PREVIEW):
        if folder is not None and folder.is_symlink():
            return f"{folder} is a link: previews are written only into folders of their own"
    target, root = out_dir.resolve(), project.resolve()
    inputs = (config.paths.templates, config.paths.updates, config.paths.subscribers)
    for path in {root, *(p.resolve() for p in (*inputs, config.paths.regions.parent))}:
        inside = target.is_relative_to(path) and path != root  # (previews/ID is fine)
        if target == path or path.is_relative_to(target) or inside:
            return f"{out_dir} is or holds the project's own {path}: choose another --preview-dir"
    return None


def _write_previews(factory: MessageFactory, stats: SelectionStats, out_dir: Path) -> list[Path]:
    entry = factory.entry
    refused = preview_folder_problem(factory.config, out_dir)
    if refused is not None:
        raise StatusmailError(refused)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_previews(out_dir)
    written: list[Path] = []
    previews: list[Preview] = []
    for key, recipients in preview_keys(factory.renderer, entry, stats):
        built = factory.build(probe_recipient(key))
        message = BytesParser(policy=email.policy.default).parsebytes(built.envelope.data)
        preview = Preview(
            key=key,
            recipients=recipients,
            headers={name: str(message[name] or "") for name in HEADERS},
            text=_part(message, "plain"),
            html=_part(message, "html"),
        )
        previews.append(preview)
        eml, page, text = (out_dir / preview.file(suffix) for suffix in PREVIEW_SUFFIXES)
        eml.write_bytes(built.envelope.data)
        page.write_text(preview.html, encoding="utf-8")
        text.write_text(preview.text, encoding="utf-8")
        written += [eml, page, text]
    index = out_dir / "index.html"
    index.write_text(gallery(entry, stats, previews), encoding="utf-8")
    written.append(index)
    return written


def _part(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    if part is None:
        return ""
    content: str = part.get_content()
    return content.replace("\r\n", "\n")


# The gallery page's own styles; no script, no remote resources.
GALLERY_CSS = f"""
body {{ margin: 0; padding: 12px; background: #e5e7eb; color: #111827;
  font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; }}
h1 {{ font-size: 20px; margin: 0 0 12px 0; overflow-wrap: anywhere; }}
h2 {{ font-size: 18px; margin: 0 0 8px 0; }}
table {{ border-collapse: collapse; margin: 0 0 12px 0; }}
th, td {{ text-align: left; vertical-align: top; padding: 2px 10px 2px 0; }}
.headers th {{ white-space: nowrap; }}
@media (max-width: 600px) {{
  .headers th, .headers td {{ display: block; padding: 0; }}
  .headers td {{ margin: 0 0 6px 0; }}
}}
td {{ overflow-wrap: anywhere; }}
.num {{ text-align: right; }}
.variant {{ background: #fff; border: 1px solid #d1d5db; border-radius: 6px;
  padding: 12px; margin: 0 0 20px 0; }}
.views {{ display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }}
figure {{ margin: 0; min-width: 0; max-width: 100%; }}
figcaption {{ font-size: 13px; color: #4b5563; margin: 0 0 4px 0; }}
.frame {{ max-width: 100%; border: 1px solid #9ca3af; }}
.desktop .frame {{ width: {DESKTOP_WIDTH}px; }}
.phone .frame {{ width: {PHONE_WIDTH}px; }}
pre {{ margin: 0; padding: 8px; max-width: 78ch; background: #f9fafb; border: 1px solid #d1d5db;
  font-size: 13px; white-space: pre-wrap; overflow-wrap: anywhere; }}
"""


def gallery(entry: Entry, stats: SelectionStats, previews: list[Preview]) -> str:
    esc = html.escape
    breakdown = "".join(
        f"<tr><td>{esc(locale)}</td><td>{esc(region or '-')}</td><td class='num'>{n}</td></tr>"
        for (locale, region), n in sorted(
            stats.selected.items(), key=lambda i: (i[0][0], i[0][1] or "")
        )
    )
    listing = "".join(
        f"<tr><td>{_link(p)}</td><td class='num'>{p.recipients}</td><td>{_files(p)}"
        f"{'' if p.recipients else ' (not drawn: nobody gets it)'}</td></tr>"
        for p in previews
    )
    cards = "".join(_card(p) for p in previews if p.recipients)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Preview: {esc(entry.id)}</title>
<style>{GALLERY_CSS}</style></head>
<body>
<h1>Preview of {esc(entry.id)} ({entry.date.isoformat()}, status {esc(entry.status)})</h1>
<p>Rendered for a made-up recipient ({esc(PREVIEW_ADDRESS)}); each real message differs
 only in its greeting name and its unsubscribe links.</p>
<table class="variants"><tr><th>variant</th><th class="num">recipients</th><th>files</th></tr>
{listing}</table>
<table><tr><th>locale</th><th>region</th><th class="num">recipients</th></tr>{breakdown}
<tr><th colspan="2">total</th><th class="num">{stats.total}</th></tr></table>
{cards}
</body></html>
"""


def _link(preview: Preview) -> str:
    label = html.escape(preview.key.title)
    return f'<a href="#{preview.key.label}">{label}</a>' if preview.recipients else label


def _files(preview: Preview) -> str:
    return " · ".join(
        f'<a href="{html.escape(preview.file(suffix))}">{suffix[1:]}</a>'
        for suffix in PREVIEW_SUFFIXES
    )


def _card(preview: Preview) -> str:
    esc = html.escape
    headers = "".join(
        f"<tr><th>{esc(name)}</th><td>{esc(value)}</td></tr>"
        for name, value in preview.headers.items()
    )
    shadow = _shadow_root(preview.html)
    count = counted(preview.recipients, "recipient")
    # the variant's language: the gallery's page is English (readers and fonts take it)
    label, lang = esc(preview.key.label), esc(preview.key.locale)
    return f"""<section class="variant" id="{label}" lang="{lang}">
<h2>{esc(preview.key.title)} · {count}</h2>
<p>{_files(preview)}</p>
<table class="headers">{headers}</table>
<div class="views">
<figure class="desktop"><figcaption>HTML, desktop ({DESKTOP_WIDTH} px)</figcaption>
<div class="frame">{shadow}</div></figure>
<figure class="phone"><figcaption>HTML, phone ({PHONE_WIDTH} px)</figcaption>
<div class="frame">{shadow}</div></figure>
<figure><figcaption>Plain text</figcaption><pre>{esc(preview.text)}</pre></figure>
</div>
</section>
"""


_STYLE = re.compile(r"<style\b[^>]*>(.*?)</style>", re.S | re.I)
_BODY = re.compile(r"<body\b([^>]*)>(.*)</body>", re.S | re.I)
_STYLE_ATTR = re.compile(r"""\bstyle\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)
# A phone client applies the message's "@media (max-width: …)" by its screen width; in
# the gallery the frame is the screen, so those rules become container queries.
_MEDIA = re.compile(r"@media\s*(?=\()", re.I)


def _shadow_root(message_html: str) -> str:
    """The message's body and styles as a declarative shadow root: scoped, script-free.

    The body becomes a ``<div>`` keeping the body's inline style; ``:host`` stops the
    gallery's own fonts and colours from being inherited into the message.
    """
    styles = "\n".join(_MEDIA.sub("@container ", css) for css in _STYLE.findall(message_html))
    body = _BODY.search(message_html)
    if body:
        attr = _STYLE_ATTR.search(body.group(1))
        body_style = (attr.group(1) or attr.group(2) or "").replace('"', "&quot;") if attr else ""
        inner = body.group(2)
    else:
        body_style, inner = "", message_html
    inner = _STYLE.sub("", inner)
    return (
        '<template shadowrootmode="open">'
        f"<style>:host {{ all: initial; display: block; }}\n{styles}</style>"
        f'<div style="container-type: inline-size; {body_style}">{inner}</div>'
        "</template>"
    )
