"""The README's table of job keys is the settings' table of keys written out: every key
the settings take appears there with its default and meaning, and every row there is a
key the settings take. The defaults in that table are the ones a run gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cron import CronSchedule
from jobs.settings import JOB_IDS, JOB_KEYS, JobConfig, JobKey, load_settings

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def table_after(text: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row is `header`, as lists of cells."""
    lines = text[text.index(header):].splitlines()[2:]  # past the header and |---|
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def written_out(keys: list[JobKey]) -> list[list[str]]:
    return [[f"`{k.name}`", k.default_text(), k.doc] for k in keys]


def test_the_readme_table_of_job_keys_is_the_table_of_keys() -> None:
    documented = table_after(section("Configuration"), "| key | default | meaning |")
    expected = written_out(list(JOB_KEYS.values()))
    table = "\n".join(f"| {' | '.join(row)} |" for row in expected)
    assert documented == expected, f"README.md, Configuration, should read:\n{table}"


def test_each_environment_variable_of_a_key_is_documented_as_overriding_it() -> None:
    variables = {row[0]: row[1] for row in table_after(section("Configuration"),
                                                       "| variable | meaning |")}
    with_env = [k for k in JOB_KEYS.values() if k.env]
    assert with_env
    for key in with_env:
        assert f"overrides `{key.name}`" in variables[f"`{key.env}`"]


@pytest.mark.parametrize("job_id", JOB_IDS)
def test_the_documented_defaults_are_the_ones_a_job_gets(job_id: str, tmp_path: Path) -> None:
    loaded = load_settings(env={}, cwd=tmp_path).job(job_id)
    bare = JobConfig(job_id, CronSchedule.parse("0 0 * * *"))
    for key in JOB_KEYS.values():
        if job_id not in key.jobs or key.type in ("cron", "text"):
            continue
        if key.type == "timezone":
            assert loaded.timezone == bare.timezone == key.default
        else:
            assert getattr(loaded, key.name) == getattr(bare, key.name) == key.default, key.name
    # The schedule's default is each job's own, in the README's table of the jobs.
    jobs = {row[0]: row[1] for row in table_after(section("The jobs"),
                                                   "| job | default schedule |")}
    assert jobs[f"`{job_id}`"] == f"`{loaded.schedule.expression}`"
