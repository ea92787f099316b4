"""Every message variant reads without horizontal scrolling on a phone, in a real browser.

Debian's Chromium, driven by playwright, renders the dry-run previews of every sample
entry, plus one variant whose access block holds a real-length v3 onion address and a
120-character URL, at 320, 360 and 390 px (as a phone: the viewport meta counts) and at
1280 px; each page is measured as sent and again with every ``<style>`` removed, as mail
clients that strip them show it. The phone prefers a dark colour scheme, the desktop a
light one, so both are measured at no extra cost. The gallery must fit a phone too.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from browser_helpers import MEASURE, Measure
from conftest import BLOCK, SAMPLE_ENTRIES, copy_sample, dry_run

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

PHONE_WIDTHS = (320, 360, 390)
DESKTOP_WIDTH = 1280
LONG = "long-addresses"


def onion_v3(public_key: bytes) -> str:
    """A well-formed v3 onion address (rend-spec-v3): 56 base32 characters + ``.onion``."""
    checksum = hashlib.sha3_256(b".onion checksum" + public_key + b"\x03").digest()[:2]
    return base64.b32encode(public_key + checksum + b"\x03").decode().lower() + ".onion"


ONION = onion_v3(hashlib.sha256(b"statusmail layout test").digest())
LONG_URL = "https://startmail-ru.test/r/" + hashlib.sha512(b"mirror").hexdigest()[:92]
SAMPLE_ONION = "http://startmailfictionalonionhostforillustrationsonlyxyzzamfqd.onion"


@pytest.fixture(scope="module")
def screens(browser: Browser) -> Iterator[dict[str, tuple[Page, tuple[int, ...]]]]:
    """A phone (touch, the viewport meta applies; dark mode) and a desktop page (light),
    each with its widths."""
    phone = browser.new_context(
        is_mobile=True, has_touch=True, device_scale_factor=2, color_scheme="dark"
    )
    desktop = browser.new_context(color_scheme="light")
    yield {
        "phone": (phone.new_page(), PHONE_WIDTHS),
        "desktop": (desktop.new_page(), (DESKTOP_WIDTH,)),
    }
    phone.close()
    desktop.close()


@pytest.fixture(scope="module")
def previews(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Preview folders of every sample entry, and of one with long addresses in RU's block."""
    root = tmp_path_factory.mktemp("layout")
    config = copy_sample(root / "sample")
    folders = {entry: root / entry for entry in SAMPLE_ENTRIES}
    for entry, folder in folders.items():
        dry_run(config, entry, folder.parent)

    config = copy_sample(root / LONG)
    regions = config.parent / "regions.yaml"
    text = regions.read_text(encoding="utf-8")
    edits = {
        f"`{SAMPLE_ONION}`": f"`{ONION}`",
        "<https://startmail-ru.test/>": f"<{LONG_URL}>",
    }
    for old, new in edits.items():
        assert text.count(old) == 2, old  # the en and the ru text of RU's access block
        text = text.replace(old, new)
    regions.write_text(text, encoding="utf-8")
    folders[LONG] = root / f"{LONG}-previews" / BLOCK
    dry_run(config, BLOCK, folders[LONG].parent)
    return folders


def variant_pages(folder: Path) -> list[Path]:
    pages = sorted(p for p in folder.glob("*.html") if p.name != "index.html")
    assert pages, f"no variants in {folder}"
    return pages


def overflows(page: Page, path: Path, widths: tuple[int, ...], *, strip: bool) -> list[str]:
    """Where ``path`` is wider than the screen, at each width, as sent (and stripped)."""
    found: list[str] = []
    page.goto(path.as_uri())
    for width in widths:
        page.set_viewport_size({"width": width, "height": 800})
        measures: list[Measure] = page.evaluate(MEASURE, strip)
        assert len(measures) == (2 if strip else 1)
        for how, m in zip(("as sent", "without <style>"), measures, strict=False):
            # innerWidth == width: the viewport meta works and nothing made Chromium zoom out
            if m["inner"] != width or m["scroll"] > m["inner"] or m["right"] > m["inner"] + 0.5:
                found.append(f"{path.name} at {width}px {how}: {m}")
    return found


def check_pages(
    screens: dict[str, tuple[Page, tuple[int, ...]]], pages: list[Path], *, strip: bool
) -> list[str]:
    found: list[str] = []
    for page, widths in screens.values():
        for path in pages:
            found += overflows(page, path, widths, strip=strip)
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", [*SAMPLE_ENTRIES, LONG])
def test_every_variant_fits_every_width(
    screens: dict[str, tuple[Page, tuple[int, ...]]], previews: dict[str, Path], source: str
) -> None:
    found = check_pages(screens, variant_pages(previews[source]), strip=True)
    assert not found, "wider than the screen:\n" + "\n".join(found)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", [*SAMPLE_ENTRIES, LONG])
def test_the_gallery_fits_a_phone(
    screens: dict[str, tuple[Page, tuple[int, ...]]], previews: dict[str, Path], source: str
) -> None:
    found = check_pages(screens, [previews[source] / "index.html"], strip=False)
    assert not found, "wider than the screen:\n" + "\n".join(found)


@pytest.mark.timeout(60)
def test_long_addresses_are_really_there_and_would_overflow(
    screens: dict[str, tuple[Page, tuple[int, ...]]], previews: dict[str, Path]
) -> None:
    """The long-address variant is no easy case: without the breaking rules it overflows."""
    assert len(ONION) == 62 and len(LONG_URL) == 120
    pages = [previews[LONG] / "en-RU.html", previews[LONG] / "ru-RU.html"]
    page, _ = screens["phone"]
    page.set_viewport_size({"width": 390, "height": 800})
    for path in pages:
        html = path.read_text(encoding="utf-8")
        assert "<code " in html and ONION in html and f'href="{LONG_URL}"' in html
        page.goto(path.as_uri())
        page.add_style_tag(
            content="* { overflow-wrap: normal !important; word-break: normal !important; }"
        )
        assert page.evaluate("document.documentElement.scrollWidth") > 390, path.name
