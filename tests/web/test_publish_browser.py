"""Every page of the published sample reads in a real browser: no horizontal scrolling at
320 px (a phone, dark mode) or 1280 px (a desktop, light), as published and with every
``<style>`` removed; in dark mode every text is legible against what is behind it; and
a page fetches nothing at all. One Chromium (conftest's ``browser``), one page per screen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from browser_helpers import MEASURE
from conftest import copy_sample
from statusmail.project.config import load_config
from statusmail.web.publish import pages_of, publish

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Request

SCREENS = {"phone": 320, "desktop": 1280}


# WCAG contrast of each element's own text against the first opaque background behind it.
CONTRAST = """() => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const behind = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const worst = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(behind(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) worst.push(`${el.tagName} ${ratio.toFixed(2)}`);
  }
  return worst;
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = copy_sample(tmp_path_factory.mktemp("site") / "project")
    return publish(load_config(config)).site


@pytest.fixture(scope="module")
def screens(browser: Browser, site: Path) -> Iterator[dict[str, tuple[Page, list[str]]]]:
    """A phone (the viewport meta applies; dark) and a desktop (light), each recording
    every request a page makes."""
    contexts: list[BrowserContext] = []
    yield dict(_screens(browser, contexts))
    for context in contexts:
        context.close()


def _screens(
    browser: Browser, contexts: list[BrowserContext]
) -> Iterator[tuple[str, tuple[Page, list[str]]]]:
    for name, width in SCREENS.items():
        phone = name == "phone"
        context = browser.new_context(
            viewport={"width": width, "height": 800},
            is_mobile=phone,
            has_touch=phone,
            color_scheme="dark" if phone else "light",
            java_script_enabled=True,  # for the measuring only: the pages hold none
        )
        contexts.append(context)
        fetched: list[str] = []

        def seen(request: Request, fetched: list[str] = fetched) -> None:
            fetched.append(request.url)

        context.on("request", seen)
        yield name, (context.new_page(), fetched)


@pytest.mark.timeout(60)
def test_every_page_fits_both_screens_is_legible_in_dark_mode_and_loads_nothing(
    site: Path, screens: dict[str, tuple[Page, list[str]]]
) -> None:
    pages = pages_of(site)
    assert len(pages) == 21  # three editions: a root, and per language an index and two entries
    found: list[str] = []
    for name, (page, fetched) in screens.items():
        width = SCREENS[name]
        for path in pages:
            fetched.clear()
            page.set_content(path.read_text(encoding="utf-8"))  # 4x faster than goto
            measured = page.evaluate(MEASURE, True)
            for how, m in zip(("as published", "without <style>"), measured, strict=True):
                if m["inner"] != width or m["scroll"] > m["inner"] or m["right"] > m["inner"] + 0.5:
                    found.append(f"{path.relative_to(site)} at {width}px {how}: {m}")
            if name == "phone":
                assert page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
                found += [f"{path.relative_to(site)} dark: {w}" for w in page.evaluate(CONTRAST)]
            assert not fetched, fetched
    assert not found, "\n".join(found)
