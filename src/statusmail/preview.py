"""Dry-run previews: one ``.eml`` and one ``.html`` per variant, and an ``index.html``.

Previews are rendered for a made-up recipient, never a real subscriber, so CI can keep
them without keeping anyone's address.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path

from statusmail.domain import Entry, Recipient
from statusmail.message import MessageFactory
from statusmail.regions import Region
from statusmail.render import Renderer, VariantKey
from statusmail.selection import SelectionStats

PREVIEW_ADDRESS = "preview@example.invalid"
PREVIEW_NAMES = {"en": "Alex Example", "ru": "Алекс Пример"}


def variants(entry: Entry, regions: Mapping[str, Region]) -> list[VariantKey]:
    """Every locale × regional treatment the entry can produce."""
    return Renderer(Path("."), regions, "").variant_keys(entry)


def write_previews(
    factory: MessageFactory,
    regions: Mapping[str, Region],
    stats: SelectionStats,
    out_dir: Path,
) -> list[Path]:
    entry = factory.entry
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    cards: list[str] = []
    for key in variants(entry, regions):
        recipient = Recipient(
            address=PREVIEW_ADDRESS,
            email=PREVIEW_ADDRESS,
            ascii_email=PREVIEW_ADDRESS,
            name=PREVIEW_NAMES.get(key.locale, "Alex Example"),
            locale=key.locale,
            region=key.region,
        )
        built = factory.build(recipient)
        eml = out_dir / f"{key.label}.eml"
        page = out_dir / f"{key.label}.html"
        eml.write_bytes(built.envelope.data)
        page.write_text(built.rendered.html, encoding="utf-8")
        written += [eml, page]
        count = sum(
            n
            for (locale, region), n in stats.selected.items()
            if locale == key.locale
            and factory.renderer.treatment(entry, region) == (key.region, key.access)
        )
        cards.append(
            f"""<section style="flex: 1 1 420px; min-width: 360px; border: 1px solid #ccc;
 border-radius: 6px; padding: 12px; background: #fff;">
<h2 style="margin: 0 0 4px 0; font-size: 16px;">{html.escape(key.label)}
 <small style="color: #666;">({count} recipients)</small></h2>
<p style="margin: 0 0 4px 0;"><b>Subject:</b> {html.escape(built.rendered.subject)}</p>
<p style="margin: 0 0 8px 0;"><b>Summary:</b> {html.escape(built.rendered.summary)}</p>
<p style="margin: 0 0 8px 0; font-size: 13px;"><a href="{page.name}">HTML</a> ·
 <a href="{eml.name}">.eml</a></p>
<iframe src="{page.name}" title="{html.escape(key.label)}" sandbox
 style="width: 100%; height: 720px; border: 1px solid #ddd;"></iframe>
</section>"""
        )
    rows = "".join(
        f"<tr><td>{html.escape(locale)}</td><td>{html.escape(region or '-')}</td>"
        f"<td style='text-align: right;'>{n}</td></tr>"
        for (locale, region), n in sorted(
            stats.selected.items(), key=lambda i: (i[0][0], i[0][1] or "")
        )
    )
    index = out_dir / "index.html"
    index.write_text(
        f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Preview: {html.escape(entry.id)}</title></head>
<body style="font-family: sans-serif; background: #f3f4f6; margin: 16px;">
<h1 style="font-size: 20px;">Preview of {html.escape(entry.id)} ({entry.date.isoformat()},
 status {html.escape(entry.status)})</h1>
<table style="border-collapse: collapse; margin-bottom: 16px;" border="1" cellpadding="4">
<tr><th>locale</th><th>region</th><th>recipients</th></tr>{rows}
<tr><th colspan="2">total</th><th style="text-align: right;">{stats.total}</th></tr></table>
<div style="display: flex; flex-wrap: wrap; gap: 16px;">{"".join(cards)}</div>
</body></html>
""",
        encoding="utf-8",
    )
    written.append(index)
    return written
