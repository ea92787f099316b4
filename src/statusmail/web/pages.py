"""The pages ``serve`` answers: the fixed ones (the one-click confirmation, the notices),
rendered once in every language (``render_pages``) and shown in the language a request
prefers (``accept_language``); and the preferences page: language and topics, as a form.

Built from ``templates/pages/`` and the messages' gettext catalog, so ``check`` covers
them like the messages. The form shows what the address chose before, if
anything, else the page's language and every topic; it never says whether the address
is subscribed. Only what the reader changed is saved: a reader who only switches the
language keeps the topics the list gives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import jinja2
from babel import Locale

from statusmail.content.catalog import catalog_path, render_error
from statusmail.content.render import typeset_environment
from statusmail.content.typography import typeset
from statusmail.domain import Preference
from statusmail.errors import InputError, Problem, RenderError, StatusmailError
from statusmail.project.config import Config
from statusmail.project.locales import FALLBACK_LOCALE, SUPPORTED_LOCALES

PREFERENCES_PAGE = "pages/preferences.html.j2"  # under the templates folder
CONFIRM_PAGE = "pages/confirm.html.j2"
NOTICE_PAGE = "pages/notice.html.j2"
NOTICES = (
    "done",
    "invalid",
    "invalid_link",
    "refused",
    "too_large",
    "not_found",
    "method",
    "error",
)


def accept_language(header: str | None) -> str:
    """The supported language the client prefers most (by q), else English."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate((header or "").split(",")):
        tag, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if tag and 0.0 < q <= 1.0:
            ranked.append((-q, position, tag.replace("_", "-")))
    preferred = [tag for _q, _position, tag in sorted(ranked)]
    found = Locale.negotiate(preferred, SUPPORTED_LOCALES, sep="-", aliases={})
    return found.language if found else FALLBACK_LOCALE


def render_pages(templates_dir: Path, site: str) -> dict[tuple[str, str], str]:
    """Every page in every language, rendered once: no page holds anything per request.

    Raises ``InputError``/``RenderError`` naming the template or catalog at fault.
    """
    pages: dict[tuple[str, str], str] = {}
    for lang in SUPPORTED_LOCALES:
        env = typeset_environment(templates_dir, lang, autoescape=True)
        catalog = None if lang == FALLBACK_LOCALE else catalog_path(templates_dir, lang)
        for page, name in [("confirm", CONFIRM_PAGE)] + [(n, NOTICE_PAGE) for n in NOTICES]:
            try:
                html = env.get_template(name).render(lang=lang, site=site, notice=page)
            except jinja2.TemplateNotFound as exc:
                message = "is missing: statusmail serve renders its pages from it"
                missing = exc.name if isinstance(exc.name, str) else name
                raise InputError([Problem(templates_dir / missing, None, message)]) from exc
            except jinja2.TemplateSyntaxError as exc:
                where = exc.filename or templates_dir / name
                raise InputError(
                    [Problem(where, exc.lineno, exc.message or "syntax error")]
                ) from exc
            except jinja2.TemplateError as exc:
                raise InputError([Problem(templates_dir / name, None, str(exc))]) from exc
            except StatusmailError:
                raise  # (a catalog that cannot be read says where already)
            except Exception as exc:  # the template's own: at its line, no traceback
                raise render_error(exc, templates_dir / name, catalog) from exc
            pages[lang, page] = html
    return pages


def language_name(code: str) -> str:
    """A language as its readers write it: English, Русский."""
    name = Locale.parse(code).get_display_name(code) or code
    return name[:1].upper() + name[1:]


@dataclass(frozen=True)
class Choice:
    """What the form shows ticked (and, after a POST, what was saved)."""

    locale: str
    topics: frozenset[str]

    @property
    def shown(self) -> str:
        """The form's hidden record of what it showed, to tell what the reader changed."""
        return f"{self.locale}|{','.join(sorted(self.topics))}"

    @classmethod
    def from_shown(cls, text: str) -> Choice | None:
        locale, sep, topics = text.partition("|")
        if not sep or locale not in SUPPORTED_LOCALES:
            return None
        return cls(locale, frozenset(t for t in topics.split(",") if t))


def initial_choice(stored: Preference | None, lang: str, declared: frozenset[str] | None) -> Choice:
    """The stored choice; what is not stored shows as the page's language and every
    topic (the same for every address, so the page tells nothing about the list)."""
    locale = stored.locale if stored and stored.locale else lang
    topics = stored.topics if stored and stored.topics is not None else declared
    return Choice(locale, frozenset(topics or ()))


def form_fields(body: bytes) -> dict[str, list[str]] | None:
    """A POST's urlencoded fields, or None when the body is not urlencoded UTF-8."""
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        return None


def posted_form_token(body: bytes) -> str:
    """The form token a POST carries (``tokens.form_token``), or "" when it has none."""
    fields = form_fields(body) or {}
    return (fields.get("form_token") or [""])[0]


def read_form(body: bytes, declared: frozenset[str] | None) -> tuple[Choice, Preference] | None:
    """The choice a POST makes, and the preference to store: only the fields that differ
    from what the form showed. None when the body is not this form."""
    fields = form_fields(body)
    if fields is None:
        return None
    shown = Choice.from_shown((fields.get("shown") or [""])[0])
    locale = (fields.get("locale") or [""])[0]
    if shown is None or locale not in SUPPORTED_LOCALES:
        return None
    topics = frozenset(t for t in fields.get("topic", []) if declared and t in declared)
    chosen = Choice(locale, topics if declared else frozenset())
    preference = Preference(
        locale=locale if locale != shown.locale else None,
        topics=topics if declared and topics != shown.topics else None,
    )
    return chosen, preference


class PreferencesPage:
    """The page in every language, its templates compiled once."""

    def __init__(
        self,
        templates_dir: Path,
        site: str,
        topics: frozenset[str] | None,
        topic_names: Mapping[str, Mapping[str, str]],
    ) -> None:
        self.templates_dir = templates_dir
        self.site = site
        self.topics = sorted(topics or ())
        self.topic_names = topic_names
        self._envs: dict[str, jinja2.Environment] = {}
        for lang in SUPPORTED_LOCALES:
            self._envs[lang] = typeset_environment(templates_dir, lang, autoescape=True)

    def topic_name(self, topic: str, lang: str) -> str:
        names = self.topic_names.get(topic, {})
        return typeset(names.get(lang) or names.get(FALLBACK_LOCALE) or topic, lang)

    def render(
        self, lang: str, choice: Choice, *, saved: bool = False, form_token: str = ""
    ) -> str:
        """The page, its form carrying ``form_token`` (see ``tokens.form_token``); raises
        ``InputError``/``RenderError`` naming the template or catalog line at fault."""
        name = PREFERENCES_PAGE
        catalog = None if lang == FALLBACK_LOCALE else catalog_path(self.templates_dir, lang)
        context = {
            "lang": lang,
            "site": self.site,
            "saved": saved,
            "languages": [
                {"code": code, "name": language_name(code), "checked": code == choice.locale}
                for code in SUPPORTED_LOCALES
            ],
            "topics": [
                {
                    "id": topic,
                    "name": self.topic_name(topic, lang),
                    "checked": topic in choice.topics,
                }
                for topic in self.topics
            ],
            "shown": choice.shown,
            "form_token": form_token,
        }
        try:
            return self._envs[lang].get_template(name).render(context)
        except jinja2.TemplateNotFound as exc:
            message = "is missing: statusmail serve renders the preferences page from it"
            missing = exc.name if isinstance(exc.name, str) else name
            raise InputError([Problem(self.templates_dir / missing, None, message)]) from exc
        except jinja2.TemplateSyntaxError as exc:
            where = exc.filename or self.templates_dir / name
            raise InputError([Problem(where, exc.lineno, exc.message or "syntax error")]) from exc
        except jinja2.TemplateError as exc:
            raise InputError([Problem(self.templates_dir / name, None, str(exc))]) from exc
        except StatusmailError:
            raise  # (a catalog that cannot be read says where already)
        except Exception as exc:  # the template's own: at its line, no traceback
            raise render_error(exc, self.templates_dir / name, catalog) from exc


def preferences_page(config: Config) -> PreferencesPage:
    return PreferencesPage(
        config.paths.templates, config.sender.name, config.topics, config.topic_names
    )


def preferences_page_problems(config: Config) -> list[Problem]:
    """What ``check`` says about the preferences page: it renders in every language,
    and every declared topic has a name in every language (else the page shows its id)."""
    problems: list[Problem] = []
    try:
        page = preferences_page(config)
        for lang in SUPPORTED_LOCALES:
            page.render(lang, Choice(lang, frozenset(config.topics or ())), saved=True)
    except InputError as exc:
        problems += exc.problems
    except RenderError as exc:
        problems.append(exc.problem or Problem(config.paths.templates, None, str(exc)))
    for topic in sorted(config.topics or ()):
        missing = [
            lang for lang in SUPPORTED_LOCALES if not config.topic_names.get(topic, {}).get(lang)
        ]
        if missing:
            problems.append(
                Problem(
                    config.path,
                    config.line("topic_names") or config.line("topics"),
                    f"topic {topic!r} has no name in {', '.join(missing)} under 'topic_names': "
                    "the preferences page shows its id",
                    warning=True,
                )
            )
    return problems
