"""`copier update`: from the previous release to HEAD, with and without the user's own edits,
with changed answers, through a conflict, refusing an invalid combination, and for a
production database the previous release created.

The template comes from a temporary repository holding the previous release (tagged) and the
working tree on top of it (see tests/releases.py)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import copier
import pytest
import yaml

from support.combinations import (
    COMBINATIONS,
    REPO_ROOT,
    Combination,
    combination_with,
    render,
)
from support.databases import migrate_command
from tests import releases
from tests.combinations import broker_aside, combinations_where, for_combination
from tests.projects import (
    SLUG,
    answers_for,
    assert_own_tests_pass,
    broker_env,
    check_command,
    check_output_is_clean,
    create_database,
    database_env,
    empty_database,
    project_env,
    query,
    run,
    start_up,
    sync,
)


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> releases.TemplateRepo:
    """The previous release and the working tree: built once per worker process."""
    return releases.build(tmp_path_factory.mktemp("template") / "repo")


def git(project: Path, *args: str) -> str:
    return releases.git(*args, cwd=project)


def commit_all(project: Path, message: str) -> None:
    git(project, "init", "--quiet", "--initial-branch=main")
    git(project, "add", "-A")
    git(project, "commit", "--quiet", "-m", message)


def update(project: Path, **kwargs: object) -> None:
    copier.run_update(
        project,
        vcs_ref="HEAD",
        defaults=True,
        overwrite=True,
        unsafe=False,
        quiet=True,
        conflict="inline",
        **kwargs,  # type: ignore[arg-type]
    )


def snapshot(project: Path) -> dict[str, str]:
    """Every file but git's, with the answers file's `_commit` (which names the version) left
    out."""
    files = {}
    for path in sorted(project.rglob("*")):
        if path.is_file() and ".git" not in path.relative_to(project).parts:
            text = path.read_text()
            if path.name == ".copier-answers.yml":
                text = re.sub(r"^_commit: .*\n", "", text, flags=re.MULTILINE)
            files[str(path.relative_to(project))] = text
    return files


def assert_same_tree(actual: Path, expected: Path) -> None:
    got, want = snapshot(actual), snapshot(expected)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


# --- a user's edits, applied alike to an old project and to a fresh copy ---------------------

Edit = Callable[[Path], None]


def add_route_file(project: Path) -> None:
    (project / "src" / SLUG / "routes" / "reports.py").write_text(
        '"""Reports: the user\'s own routes."""\n\nfrom fastapi import APIRouter\n\n'
        'router = APIRouter(prefix="/reports", tags=["reports"])\n'
    )


def change_a_setting_default(project: Path) -> None:
    settings = project / "src" / SLUG / "settings.py"
    text = settings.read_text()
    old = 'environment: Literal["development", "test", "production"] = "development"'
    assert old in text
    settings.write_text(text.replace(old, old.replace('= "development"', '= "test"')))


def edit_a_test(project: Path) -> None:
    with (project / "tests" / "test_items.py").open("a") as tests:
        tests.write(
            "\n\nasync def test_the_users_own(client: httpx.AsyncClient) -> None:\n"
            '    assert (await client.get("/items")).status_code == 200\n'
        )


USER_EDITS: list[Edit] = [add_route_file, change_a_setting_default, edit_a_test]


def apply(edits: Sequence[Edit], project: Path) -> None:
    for edit in edits:
        edit(project)


def generate(
    dst: Path, answers: dict[str, object], src: Path, vcs_ref: str, edits: Sequence[Edit] = ()
) -> Path:
    """A project as its user keeps it: generated, committed, then edited and committed."""
    project = render(dst, answers, src=src, vcs_ref=vcs_ref)
    commit_all(project, "Generated")
    if edits:
        apply(edits, project)
        git(project, "add", "-A")
        git(project, "commit", "--quiet", "-m", "The user's edits")
    return project


# --- from the previous release ---------------------------------------------------------------


# RabbitMQ's projects differ from Redis' ones only in the broker.
@combinations_where(lambda c: broker_aside(c) and releases.offered_by_previous_release(c))
def test_update_from_the_previous_release_equals_a_fresh_copy_plus_the_users_edits(
    combination: Combination, template_repo: releases.TemplateRepo, tmp_path: Path
) -> None:
    """The edits survive and the template's changes arrive."""
    check_update_from_the_previous_release(combination, USER_EDITS, template_repo, tmp_path)


@for_combination(combination_with())
def test_an_untouched_project_of_the_previous_release_becomes_a_fresh_copy(
    combination: Combination, template_repo: releases.TemplateRepo, tmp_path: Path
) -> None:
    """Without edits of the user's (once: every combination's update is checked with them)."""
    check_update_from_the_previous_release(combination, (), template_repo, tmp_path)


def check_update_from_the_previous_release(
    combination: Combination,
    edits: Sequence[Edit],
    template_repo: releases.TemplateRepo,
    tmp_path: Path,
) -> None:
    """A project of the previous release, with `edits`, updated to the working tree: a fresh
    copy of it, with the same edits."""
    answers = answers_for(combination)
    previous = template_repo.previous.tag
    project = generate(tmp_path / "project", answers, template_repo.path, previous, edits)
    assert yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"] == previous

    update(project)

    expected = render(tmp_path / "expected", answers, src=template_repo.path)
    apply(edits, expected)
    assert_same_tree(project, expected)


# Code of release 0.7.0 that 0.8.0 moved to another file (main.py's exception handlers, to
# errors.py), or to another template (the SQLAlchemy db.py of each mode, now one).
CODE_MOVED_SINCE = "0.7.0"
MOVED_CODE_EDITS = {
    "main.py": (
        '"All database connections are busy; try again shortly"',
        '"Every connection is taken: the user\'s own words"',
    ),
    "db.py": (
        "Sessions that keep loaded attributes after commit",
        "The user's own sessions, which keep loaded attributes after commit",
    ),
}


@for_combination(combination_with(database="postgresql", db_mode="sync"))
def test_an_edit_to_code_that_moved_is_kept_through_the_update(
    combination: Combination, tmp_path: Path
) -> None:
    """An edit of the user's to code the template has since moved or merged is never lost: it
    stays in the file where the user made it, as a conflict at worst."""
    template_repo = releases.build(tmp_path / "template", releases.release(CODE_MOVED_SINCE))
    answers = answers_for(combination)
    previous = template_repo.previous.tag
    project = generate(tmp_path / "project", answers, template_repo.path, previous)
    package = project / "src" / SLUG
    for name, (old, new) in MOVED_CODE_EDITS.items():
        text = (package / name).read_text()
        assert old in text, name
        (package / name).write_text(text.replace(old, new))
    git(project, "commit", "--quiet", "-am", "The user's edits")

    update(project)

    for name, (_, new) in MOVED_CODE_EDITS.items():
        assert new in (package / name).read_text(), name


# --- a production database of the previous release --------------------------------------------


# SQLAlchemy's migrations are the same files in both modes (only env.py, which every
# combination's own migrations test runs, differs): the async projects stand for the sync ones.
@combinations_where(
    lambda c: (
        c.task_queue == "background" and c.is_async and releases.offered_by_previous_release(c)
    )
)
def test_a_production_database_of_the_previous_release_keeps_its_rows_through_the_migrations(
    combination: Combination, template_repo: releases.TemplateRepo, tmp_path: Path
) -> None:
    """What the changelog tells users to do after updating: apply the migrations to the
    production database of the previous release, whose schema its own migrations made (in
    production, migrations own the schema). The rows stay, and the ORM's tool finds the schema
    and the models in agreement."""
    previous = template_repo.previous.tag
    project = generate(tmp_path / "project", answers_for(combination), template_repo.path, previous)
    url = empty_database(combination, "previous", tmp_path)
    env = database_env(url, "production")
    previous_venv = sync(project, env)
    git(project, "add", "-A")
    git(project, "commit", "--quiet", "-m", "Lock the dependencies")
    run(migrate_command(combination, previous_venv), project, env)
    # The previous release's app serves over it.
    start_up(project, env, tmp_path)
    query(combination, url, "INSERT INTO items (name, quantity) VALUES ('kept', 3)")

    update(project)
    venv = sync(project, env)
    run(migrate_command(combination, venv), project, env)
    check_output_is_clean(combination, run(check_command(combination, venv), project, env))
    assert query(combination, url, "SELECT name, quantity FROM items") == ["kept|3"]


def test_sqlalchemys_migrations_are_the_same_in_both_modes() -> None:
    """What lets the async projects stand for the sync ones above."""
    (versions,) = (REPO_ROOT / "template").glob("*migrations*/versions")
    assert "alembic" in (versions.parent / "env.py.jinja").read_text()
    templates = list(versions.iterdir())
    assert templates
    for template in templates:
        assert "db_mode" not in template.name + template.read_text(), template.name


# --- a conflict ------------------------------------------------------------------------------


@pytest.fixture
def conflicting_repo(template_repo: releases.TemplateRepo, tmp_path: Path) -> Path:
    """The template repository plus a commit that retitles the generated README."""
    repo = tmp_path / "conflicting"
    subprocess.run(["git", "clone", "--quiet", str(template_repo.path), str(repo)], check=True)
    readme = repo / "template" / "README.md.jinja"
    text = readme.read_text()
    assert text.startswith("# {{ project_name }}\n")
    readme.write_text(text.replace("# {{ project_name }}\n", "# {{ project_name }} service\n", 1))
    releases.commit(repo, "Retitle the README")
    return repo


@for_combination(combination_with())
def test_a_conflict_is_reported_inline_and_keeps_both_sides(
    combination: Combination,
    template_repo: releases.TemplateRepo,
    conflicting_repo: Path,
    tmp_path: Path,
) -> None:

    def retitle(project: Path) -> None:
        readme = project / "README.md"
        readme.write_text(readme.read_text().replace("# Inventory\n", "# Inventory, our way\n", 1))

    answers = answers_for(combination)
    project = generate(
        tmp_path / "project", answers, conflicting_repo, template_repo.head, [retitle]
    )
    readme = project / "README.md"

    update(project)

    text = readme.read_text()
    assert "<<<<<<< before updating" in text and ">>>>>>> after updating" in text, text[:400]
    assert "# Inventory, our way" in text
    assert "# Inventory service" in text


# --- changing answers ------------------------------------------------------------------------

ANSWER_CHANGES = [
    (combination_with(), {"task_queue": "celery", "celery_broker": "rabbitmq"}),
    (combination_with(), {"db_mode": "sync"}),
    (combination_with(), {"database": "mysql"}),
    (
        combination_with(orm="tortoise"),
        {"db_mode": "sync", "orm": "sqlalchemy"},
    ),
]


# What a changed answer changes: where the data lives, how jobs run, how the schema is made.
UPDATED_PROJECT_TESTS = (
    "tests/test_health.py",
    "tests/test_items.py",
    "tests/test_jobs.py",
    "tests/test_migrations.py",
)


@pytest.mark.parametrize(
    ("original", "change"),
    [
        pytest.param(
            original,
            change,
            id=f"{original.id}+{'+'.join(change.values())}",
            marks=pytest.mark.xdist_group(f"update-{n}"),
        )
        for n, (original, change) in enumerate(ANSWER_CHANGES)
    ],
)
def test_changing_answers_equals_a_fresh_copy_whose_tests_pass(
    original: Combination,
    change: dict[str, str],
    template_repo: releases.TemplateRepo,
    tmp_path: Path,
) -> None:
    """The updated project is a fresh copy with the new answers (plus the user's edits), whose
    whole suite test_combinations.py runs; here, its own tests of the database, the jobs and the
    migrations pass in the environment `uv sync` makes of it after the update."""
    answers = answers_for(original)
    project = generate(tmp_path / "project", answers, template_repo.path, "HEAD", USER_EDITS)

    update(project, data=change)

    changed = Combination(**{**original.data, **change})
    expected = render(tmp_path / "expected", {**answers, **change}, src=template_repo.path)
    apply(USER_EDITS, expected)
    assert_same_tree(project, expected)

    # A Redis database or RabbitMQ virtual host of its own, after the combinations' own.
    index = len(COMBINATIONS) + 1 + ANSWER_CHANGES.index((original, change))
    env = broker_env(changed, index=index)
    if changed.database_server:
        env["DATABASE_URL"] = create_database(changed, suffix="update", empty=True)
    sync(project, project_env())
    assert_own_tests_pass(project, env, *UPDATED_PROJECT_TESTS)


# --- an invalid combination ------------------------------------------------------------------


@for_combination(combination_with(orm="tortoise"))
def test_an_update_to_an_invalid_combination_is_refused_and_changes_nothing(
    combination: Combination, template_repo: releases.TemplateRepo, tmp_path: Path
) -> None:
    assert combination.orm == "tortoise"
    project = generate(tmp_path / "project", answers_for(combination), template_repo.path, "HEAD")
    before = snapshot(project)

    with pytest.raises(ValueError, match="Tortoise ORM is async-only"):
        update(project, data={"db_mode": "sync"})

    assert snapshot(project) == before
    assert git(project, "status", "--porcelain") == ""
