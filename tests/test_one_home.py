"""Each shared helper has one home: read from the source of jobs/ and console/ (no import,
no database), so a second copy of a helper fails here before it can drift from the first.

Each rule is also run on a made-up module that breaks it, to show that it can fail."""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from jobs.text import FALSE_WORDS, TRUE_WORDS, one_line, parse_flag

ROOT = Path(__file__).resolve().parent.parent
ANALYTICS_JOB = "analytics-aggregate"


def sources() -> dict[str, str]:
    """Every module of jobs/ and console/ but the migration scripts, by relative path."""
    paths = [*sorted((ROOT / "jobs").rglob("*.py")), *sorted((ROOT / "console").rglob("*.py"))]
    return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in paths
            if "versions" not in p.parts}


def _trees(modules: Mapping[str, str]) -> Iterator[tuple[str, ast.Module]]:
    for path, text in modules.items():
        yield path, ast.parse(text, filename=path)


def classes_defined_twice(modules: Mapping[str, str]) -> dict[str, list[str]]:
    """Class names defined in more than one module (two unrelated `Claimed`, say)."""
    where: dict[str, list[str]] = defaultdict(list)
    for path, tree in _trees(modules):
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(path)
    return {name: paths for name, paths in where.items() if len(paths) > 1}


def homes_of(modules: Mapping[str, str], name: str) -> set[str]:
    """The modules that define `name`: a function, a class or an assignment (an alias)."""
    found = set()
    for path, tree in _trees(modules):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name.lstrip("_") == name:
                found.add(path)
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            if any(isinstance(t, ast.Name) and t.id.lstrip("_") == name for t in targets):
                found.add(path)
    return found


def yes_no_word_sets(modules: Mapping[str, str]) -> set[str]:
    """The modules with a set literal of yes/no words (`{"1", "true", "yes"}`)."""
    found = set()
    for path, tree in _trees(modules):
        for node in ast.walk(tree):
            if isinstance(node, ast.Set) and any(
                isinstance(e, ast.Constant) and e.value in ("true", "false") for e in node.elts
            ):
                found.add(path)
    return found


def modules_naming(modules: Mapping[str, str], value: str) -> set[str]:
    """The modules whose code (docstrings aside) holds the string `value` itself."""
    found = set()
    for path, tree in _trees(modules):
        docstrings = {id(n.value) for n in ast.walk(tree)
                      if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == value and id(node) not in docstrings:
                found.add(path)
    return found


# --- the rules, on the real code -----------------------------------------------------------------


def test_no_two_modules_define_a_class_of_the_same_name() -> None:
    assert classes_defined_twice(sources()) == {}


def test_the_clock_type_is_defined_once() -> None:
    assert homes_of(sources(), "Clock") == {"jobs/timeutil.py"}


def test_one_line_and_the_yes_no_words_are_defined_once() -> None:
    modules = sources()
    assert homes_of(modules, "one_line") == {"jobs/text.py"}
    assert yes_no_word_sets(modules) == {"jobs/text.py"}


def test_the_analytics_job_id_is_written_in_the_job_list_and_the_job_only() -> None:
    # jobs.job_ids lists every job, jobs.settings the keys each takes; everything else
    # says jobs.analytics.JOB_ID.
    assert modules_naming(sources(), ANALYTICS_JOB) == {"jobs/job_ids.py", "jobs/settings.py",
                                                        "jobs/analytics.py"}


def test_schedule_modules_are_named_by_what_they_hold() -> None:
    names = {Path(p).name for p in sources() if p.startswith("jobs/")}
    assert {"cron.py", "slots.py"} <= names
    assert not {"schedule.py", "scheduler.py"} & names


# --- the rules can fail ----------------------------------------------------------------------------

COPIES = {
    "jobs/sender.py": 'class Claimed:\n    """An email."""\n\n_TRUE = {"1", "true"}\n',
    "console/runner.py": (
        "from collections.abc import Callable\nfrom datetime import datetime\n\n"
        "Clock = Callable[[], datetime]\n\nclass Claimed:\n    pass\n\n"
        "def _one_line(text: str) -> str:\n    return text\n\n"
        'JOB = "analytics-aggregate"\n'
    ),
    "jobs/text.py": '"""About analytics-aggregate."""\n',
}


def test_the_rules_find_copies() -> None:
    assert classes_defined_twice(COPIES) == {"Claimed": ["jobs/sender.py", "console/runner.py"]}
    assert homes_of(COPIES, "Clock") == {"console/runner.py"}
    assert homes_of(COPIES, "one_line") == {"console/runner.py"}
    assert yes_no_word_sets(COPIES) == {"jobs/sender.py"}
    assert modules_naming(COPIES, ANALYTICS_JOB) == {"console/runner.py"}  # not a docstring


# --- the shared helpers themselves -----------------------------------------------------------------


@pytest.mark.parametrize("word", ["1", "true", "TRUE", "yes", "On"])
def test_yes_words(word: str) -> None:
    assert parse_flag(word) is True


@pytest.mark.parametrize("word", ["", "0", "false", "No", "off"])
def test_no_words(word: str) -> None:
    assert parse_flag(word) is False


@pytest.mark.parametrize("word", ["maybe", "2", "y", " 1"])
def test_other_words_are_neither(word: str) -> None:
    assert parse_flag(word) is None
    assert word.lower() not in TRUE_WORDS | FALSE_WORDS


def test_one_line_folds_every_line_break() -> None:
    assert one_line("Renewal\r\nBcc: x@example.com\u2028 due  soon\n") == \
        "Renewal Bcc: x@example.com due soon"
