"""One Chromium per worker for the browser modules that run one after another.

Starting playwright's driver and Chromium costs about 1.1 s of CPU, so a browser module
lends the one the module before it left open. Two things keep it from reaching the other
tests: the sync API marks its event loop as the thread's running one between its calls
(then ``asyncio.run`` and pytest-asyncio refuse to start), so that mark is on only while
a browser module runs; and the driver and Chromium are child processes (a test may count
its own), so the first module without the browser closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from playwright.sync_api import Browser


class SharedChromium:
    """The browser ``launch()`` opens, lent to one module at a time (``lend``)."""

    def __init__(self, launch: Callable[[], AbstractContextManager[Browser]]) -> None:
        self._launch = launch
        self._open: tuple[ExitStack, Browser, asyncio.AbstractEventLoop] | None = None

    def lend(self) -> Iterator[Browser]:
        """The browser for a module (a fixture's generator): its loop marked running."""
        if self._open is None:
            stack = ExitStack()
            browser = stack.enter_context(self._launch())
            loop = asyncio.get_running_loop()  # playwright's, marked by the sync API
            self._open = stack, browser, loop
        else:
            asyncio._set_running_loop(self._open[2])
        try:
            yield self._open[1]
        finally:
            asyncio._set_running_loop(None)

    def close(self) -> None:
        """Close the browser and the driver, if open."""
        if self._open is not None:
            stack, _, loop = self._open
            self._open = None
            asyncio._set_running_loop(loop)
            try:
                stack.close()
            finally:
                asyncio._set_running_loop(None)


# The widest right edge of any element, of the page as it is and, if asked, with every
# <style> removed (then put back): reading a layout property makes Chromium lay the page
# out again on the spot. For the messages' and the status site's layout tests.
MEASURE = """(strip) => {
  const measure = () => {
    let right = 0;
    for (const el of document.body.querySelectorAll('*'))
      right = Math.max(right, el.getBoundingClientRect().right);
    return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth, right};
  };
  const sent = measure();
  if (!strip) return [sent];
  const styles = [...document.querySelectorAll('style')].map(s => [s, s.parentNode, s.nextSibling]);
  styles.forEach(([s]) => s.remove());
  const bare = measure();
  styles.forEach(([s, parent, next]) => parent.insertBefore(s, next));
  return [sent, bare];
}"""


class Measure(TypedDict):
    scroll: int
    inner: int
    right: float
