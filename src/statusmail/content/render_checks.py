"""What ``check`` and every run find by building an entry's messages: every variant
built (with and without a name), so that a template, catalog or key error shows before
anything is sent, and no reader gets a link their region blocks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from statusmail.content.message import MessageFactory
from statusmail.content.variants import VariantKey, probe_recipient
from statusmail.domain import Entry
from statusmail.errors import Problem, RenderError, StatusmailError
from statusmail.project.regions import Region


def render_problems(factory: MessageFactory, keys: Iterable[VariantKey]) -> list[Problem]:
    """Build every variant (with and without a name), so a template, catalog or key
    error shows here and not mid-send; and no reader gets a link their region blocks."""
    entry = factory.entry
    problems: list[Problem] = []
    for key in keys:
        for named in (True, False):
            probe = probe_recipient(replace(key, named=named))
            try:
                built = factory.build(probe)
                rendered = built.rendered
            except RenderError as exc:
                fallback = Problem(entry.where, None, str(exc), code="render-error")
                _add(problems, exc.problem or fallback)
                break
            except StatusmailError as exc:
                _add(problems, Problem(entry.where, None, str(exc), code="render-error"))
                break
            region = factory.renderer.region(key)
            if region is None or not region.links or key.topics is not None:
                # (a footer naming some of the topics has no link the entry's own lacks)
                continue
            headers = built.envelope.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
            for part, text in (
                ("its text part", rendered.text),
                ("its HTML part", rendered.html),
                ("its headers", headers),
            ):
                for host in region.blocked_hosts_in(text):
                    problems.append(_leak(entry, key, region, host, part))
            break  # the name does not change links
    return problems


def _add(problems: list[Problem], problem: Problem) -> None:
    if problem not in problems:  # a template's error shows once, not once per variant
        problems.append(problem)


def _leak(entry: Entry, key: VariantKey, region: Region, host: str, where: str) -> Problem:
    said = f"readers in {region.code} still get a link to {host} in {where} ({key.title}): "
    content = entry.content.get(key.locale)
    for field in ("subject", "summary"):
        text = getattr(content, field, "") if content is not None else ""
        if host in region.blocked_hosts_in(text):
            # (the advice for a body said to write it as the rewrite wants: it was so)
            return Problem(
                entry.where,
                entry.line(f"content.{key.locale}.{field}") or entry.line("content"),
                said + f"the {field} is never rewritten (only bodies are): leave the link "
                "out of it, or give it in the body",
                code="blocked-link",
            )
    return Problem(
        entry.where,
        entry.line(f"content.{key.locale}") or entry.line("content"),
        said + f"write it as {region.links[0][0]}… so that regions.yaml's links rewrite it",
        code="blocked-link",
    )
