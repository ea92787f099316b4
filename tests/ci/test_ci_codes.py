"""Problem codes are stable and documented: every code the checks can give is in the
README's table and nothing else is; every problem the checks make names its code; the
README shows the pipelines exactly as contrib/ci holds them."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

from conftest import REPO
from statusmail.ci.formats import CHANGED_CODE
from statusmail.errors import Problem

SOURCE = REPO / "src" / "statusmail"
# The modules where problems are made for check (issue 15): each names its code.
CODED = (
    "validation",
    "content/catalog",
    "content/catalog_gaps",
    "content/fixed_text",
    "project/config",
    "project/entries",
    "project/regions",
    "project/yamlfile",
    "project/fields",
    "content/dkim_signing",
    "delivery/corrections",
    "delivery/intake",
    "project/secrets",
    "project/sending",
    "project/language_checks",
    "project/audience_checks",
    "content/render_checks",
)
CODE = re.compile(r"[a-z]+(-[a-z]+)*")


def codes_in(tree: ast.AST) -> set[str]:
    """String constants given as ``code=``, assigned to ``code``, or a ``code`` default."""
    found: set[str] = set()
    values: list[ast.AST] = []
    for node in ast.walk(tree):
        named = isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "code" for t in node.targets
        )
        if (isinstance(node, ast.keyword) and node.arg == "code") or named:
            assert isinstance(node, ast.keyword | ast.Assign)
            values.append(node.value)
        elif isinstance(node, ast.FunctionDef):
            positional = node.args.args[len(node.args.args) - len(node.args.defaults) :]
            values += [
                d for a, d in zip(positional, node.args.defaults, strict=True) if a.arg == "code"
            ]
    for value in values:
        found |= {
            n.value
            for n in ast.walk(value)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
    return found


def documented() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("### Problem codes") :]
    table = table[: table.index("\n## ")]
    return re.findall(r"^\| `([^`]+)` \|", table, flags=re.M)


def test_every_code_is_documented_once_and_nothing_else() -> None:
    used = set()
    for path in (SOURCE / f"{module}.py" for module in CODED):
        used |= codes_in(ast.parse(path.read_text(encoding="utf-8")))
    default = next(f.default for f in fields(Problem) if f.name == "code")
    used |= {str(default), CHANGED_CODE}
    listed = documented()
    assert len(listed) == len(set(listed)), "a code is listed twice"
    assert set(listed) == used
    assert all(CODE.fullmatch(code) for code in listed)
    assert len(used) > 30  # the walk found the codes, not nothing


def test_the_checks_name_a_code_for_every_problem() -> None:
    uncoded = []
    for module in CODED:
        path = SOURCE / f"{module}.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Problem"
                and not any(k.arg == "code" for k in node.keywords)
            ):
                uncoded.append(f"{path.name}:{node.lineno}")
    assert uncoded == []


def test_problems_still_print_as_before() -> None:
    problem = Problem(Path("updates/x.yaml"), 3, "bad", code="bad-value")
    assert str(problem) == "updates/x.yaml:3: bad"
    assert str(Problem("regions.yaml", None, "w", warning=True, code="region-name")) == (
        "regions.yaml: warning: w"
    )


def test_the_readme_shows_both_pipelines_as_they_are() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in ("github-actions.yml", "gitlab-ci.yml"):
        text = (REPO / "contrib" / "ci" / name).read_text(encoding="utf-8")
        assert f"```yaml\n{text}```\n" in readme, name
