"""Every valid combination: rendered, checked statically, installed, linted, type-checked, and
its own test suite run against its real database (and a real Celery worker on real Redis).

All tests of one combination share one rendering and one virtual environment, and run on one
xdist worker (`--dist loadgroup`).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from support.combinations import Combination, combination_with, render
from support.databases import migrate_command
from support.services import WORKFLOW_ACCOUNTS
from tests.combinations import (
    broker_aside,
    combination_param,
    combinations_where,
    for_combination,
    stands_for_its_broker,
)
from tests.projects import (
    SLUG,
    answers_for,
    assert_own_tests_pass,
    broker_env,
    database_url_for,
    project_env,
    run,
    sqlite_url,
)

JINJA_LEFTOVER = re.compile(r"\{\{|\{%|%\}|\{#")
# Made by installing or checking the project, not by rendering it.
GENERATED_LATER = {
    ".git",
    ".venv",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "__pycache__",
    "uv.lock",
}


def rendered_files(project: Path) -> set[str]:
    """The project's files, as rendered (not what installing or checking it made)."""
    return {
        path.relative_to(project).as_posix()
        for path in project.rglob("*")
        if path.is_file() and not GENERATED_LATER & set(path.relative_to(project).parts)
    }


# --- rendering -------------------------------------------------------------------------------


@combination_param
def test_no_template_syntax_is_left(project: Path) -> None:
    leftovers = [
        f"{name}:{number}: {line.strip()}"
        for name in sorted(rendered_files(project))
        for number, line in enumerate((project / name).read_text().splitlines(), 1)
        if JINJA_LEFTOVER.search(line)
    ]
    assert not leftovers, "\n".join(leftovers)
    assert not list(project.rglob("*.jinja"))


@combination_param
def test_answers_file_is_written(project: Path, combination: Combination) -> None:
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["_src_path"]
    expected = answers_for(combination)
    for question, value in expected.items():
        assert answers[question] == value, question
    if combination.task_queue == "celery":
        assert answers["celery_broker"] == combination.celery_broker
    else:
        assert "celery_broker" not in answers


@combination_param
def test_files_match_the_combination(project: Path, combination: Combination) -> None:
    package = project / "src" / SLUG
    for name in ("worker.py", "worker_main.py", "jobqueue.py"):
        assert (package / name).exists() == (combination.task_queue == "celery"), name
    for name in ("main.py", "errors.py", "routing.py", "settings.py", "db.py", "models.py"):
        assert (package / name).is_file(), name
    for name in ("schemas.py", "jobs.py", "jobstate.py"):
        assert (package / name).is_file(), name
    for name in ("live.py", "changefeed.py", "changes.py", "news.py"):
        assert (package / name).is_file(), name
    for name in ("items.py", "jobs.py", "live.py", "health.py"):
        assert (package / "routes" / name).is_file(), name
    for name in (
        "pyproject.toml",
        "README.md",
        "gunicorn.conf.py",
        ".env.example",
        ".gitignore",
        ".pre-commit-config.yaml",
        ".github/workflows/ci.yml",
        "Dockerfile",
        ".dockerignore",
        "compose.yaml",
    ):
        assert (project / name).is_file(), name
    assert (package / "migrations.py").exists() == (combination.orm == "tortoise")
    # Where a URL can carry a password, production refuses a weak one.
    has_secrets = combination.database_server or combination.task_queue == "celery"
    assert (package / "passwords.py").exists() == has_secrets
    migrations = project / "migrations"
    if combination.orm == "sqlalchemy":
        assert (migrations / "env.py").is_file()
        assert sorted(p.name for p in (migrations / "versions").iterdir()) == [
            "0001_create_items_and_jobs.py",
            "0002_record_job_attempts_and_changes.py",
            "0003_record_changes_for_live_clients.py",
        ]
    else:
        assert sorted(p.name for p in (migrations / "models").iterdir()) == [
            "0_20261121000000_init.py",
            "1_20261123000000_record_job_attempts_and_changes.py",
            "2_20261207000000_record_changes_for_live_clients.py",
        ]


def dependency_names(project: Path) -> set[str]:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    names = set()
    for requirement in pyproject["project"]["dependencies"]:
        match = re.match(r"[A-Za-z0-9_.-]+(\[[a-z,]+\])?", requirement)
        assert match, requirement
        names.add(match.group(0).lower())
    return names


@combination_param
def test_dependencies_are_exactly_what_the_combination_needs(
    project: Path, combination: Combination
) -> None:
    expected = {
        "fastapi",
        "pydantic-settings",
        "python-dotenv",
        "uvicorn[standard]",
        "gunicorn",
        "uvicorn-worker",
        "httpx",
        "prometheus-client",
        "asgi-correlation-id",
        "python-json-logger",
    }
    async_driver = {"postgresql": "asyncpg", "mysql": "asyncmy", "sqlite": "aiosqlite"}
    if combination.orm == "tortoise":
        extra = {"postgresql": "[asyncpg]", "mysql": "[asyncmy]", "sqlite": ""}
        expected |= {"aerich", f"tortoise-orm{extra[combination.database]}"}
    elif combination.is_async:
        expected |= {"alembic", "sqlalchemy[asyncio]", async_driver[combination.database]}
    else:
        expected |= {"alembic", "sqlalchemy"}
        sync_driver = {"postgresql": "psycopg[binary]", "mysql": "pymysql"}
        if combination.database_server:
            expected.add(sync_driver[combination.database])
    if combination.task_queue == "celery":
        # RabbitMQ's client (py-amqp) comes with Celery; Redis' is an extra.
        expected.add("celery[redis]" if combination.celery_broker == "redis" else "celery")
        if combination.celery_broker == "redis" and combination.database != "postgresql":
            # The live clients' news travels through Redis (news.py), which it imports itself.
            expected.add("redis")
    assert dependency_names(project) == expected


def functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def is_route(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(d, ast.Call)
        and isinstance(d.func, ast.Attribute)
        and isinstance(d.func.value, ast.Name)
        and d.func.value.id == "router"
        for d in function.decorator_list
    )


def uses_database(function: ast.FunctionDef | ast.AsyncFunctionDef, orm: str) -> bool:
    """Whether a handler or dependency reaches the database."""
    if orm == "tortoise":
        source = ast.unparse(function)
        return any(name in source for name in ("Item", "Job", "ping("))
    names = {a.arg for a in function.args.args} | {
        ast.unparse(a.annotation) for a in function.args.args if a.annotation is not None
    }
    return bool(names & {"session", "SessionDep", "session_factory", "SessionFactoryDep"})


@combination_param
def test_route_style_matches_the_driver(project: Path, combination: Combination) -> None:
    """async mode: every handler and DB dependency is `async def`; sync mode: those touching the
    database, or calling out through the blocking HTTP client, are plain `def` (FastAPI runs
    them in its thread pool). Live routes are `async def` in every mode: a stream must not hold
    a thread of the pool for as long as its client stays."""
    package = project / "src" / SLUG
    routes = [f for path in sorted((package / "routes").glob("*.py")) for f in functions(path)]
    handlers = [f for f in routes if is_route(f)]
    assert len(handlers) == 13, [f.name for f in handlers]
    live = [f for f in functions(package / "routes" / "live.py") if is_route(f)]
    assert {f.name for f in live} == {"job_events", "items_live"}
    assert all(isinstance(f, ast.AsyncFunctionDef) for f in live)
    db_functions = [f for f in functions(package / "db.py") if f.name.startswith("get_")]
    database_code = [f for f in routes + db_functions if uses_database(f, combination.orm)]
    assert len(database_code) >= 8
    if combination.is_async:
        wrong = [f.name for f in routes + db_functions if not isinstance(f, ast.AsyncFunctionDef)]
    else:
        # ... and so are /compute, which waits for the process pool's result, and /upstream.
        blocking = database_code + [f for f in handlers if f.name in {"compute", "call_upstream"}]
        wrong = [f.name for f in blocking if isinstance(f, ast.AsyncFunctionDef)]
    assert not wrong, f"{combination.db_mode} mode, but these are not: {wrong}"


BLOCKING_CALLS = {
    "apply_async",
    "commit",
    "create_all",
    "delay",
    "delete",
    "dispose",
    "execute",
    "flush",
    "get",
    "refresh",
    "rollback",
    "run_sync",
    "save",
    "scalar",
    "scalars",
    "sleep",
}

# Receivers whose `get` is a lookup, not I/O.
NOT_IO = {"connections", "message", "os.environ", "scope", "self.series"}


@combination_param
def test_no_blocking_call_inside_async_def(project: Path) -> None:
    """Inside every `async def`, a call that may do I/O is awaited (or handed to a thread)."""
    offences = []
    for path in sorted((project / "src").rglob("*.py")):
        for function in functions(path):
            if not isinstance(function, ast.AsyncFunctionDef):
                continue
            body = [node for statement in function.body for node in ast.walk(statement)]
            awaited = {id(n.value) for n in body if isinstance(n, ast.Await)}
            for call in body:
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr in BLOCKING_CALLS
                    and id(call) not in awaited
                    and ast.unparse(call.func.value) not in NOT_IO
                ):
                    offences.append(f"{path.name}:{call.lineno} {ast.unparse(call)}")
    assert not offences, offences


def load_gunicorn_config(project: Path, venv: Path, env: dict[str, str]) -> dict[str, object]:
    """gunicorn.conf.py's values, as the project's own interpreter computes them."""
    names = ["worker_class", "wsgi_app", "workers", "bind", "graceful_timeout"]
    code = (
        "import json, runpy; config = runpy.run_path('gunicorn.conf.py'); "
        f"print(json.dumps({{name: config[name] for name in {names!r}}}))"
    )
    clean = {k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"}
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=project,
        env={**clean, **project_env(), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    config: dict[str, object] = json.loads(result.stdout)
    return config


@combination_param
def test_gunicorn_config_carries_the_answers(
    project: Path, venv: Path, combination: Combination
) -> None:
    config = load_gunicorn_config(project, venv, {})
    assert config["worker_class"] == "uvicorn_worker.UvicornWorker"
    assert config["wsgi_app"] == f"{SLUG}.main:create_app()"
    cpus = os.cpu_count() or 1
    expected = {3: 3, 0: cpus if combination.is_async else cpus + 1}[
        int(answers_for(combination)["workers"])  # type: ignore[call-overload]
    ]
    assert config["workers"] == expected
    assert load_gunicorn_config(project, venv, {"WEB_CONCURRENCY": "7"})["workers"] == 7

    settings = (project / "src" / SLUG / "settings.py").read_text()
    for setting, value in [
        ("db_pool_size: int", "3"),
        ("db_max_overflow: int", "4"),
        ("db_pool_timeout: float", "12.5"),
        ("db_pool_recycle: int", "900"),
    ]:
        assert re.search(rf"{setting} = Field\(default={value}\b", settings), setting


# --- installed -------------------------------------------------------------------------------


@combination_param
def test_own_test_suite_passes(project: Path, venv: Path, combination: Combination) -> None:
    """With the environment the project's own CI workflow sets, as its users run it: against
    SQLite, or a real PostgreSQL or MariaDB; the Celery combinations with a real worker and a
    real Redis or RabbitMQ (a database or virtual host of their own, so that parallel runs do
    not share a queue). A RabbitMQ project runs the tests its broker reaches (broker_tests);
    the rest of its suite is its Redis twin's, byte for byte."""
    paths = () if broker_aside(combination) else broker_tests(combination)
    assert_own_tests_pass(project, workflow_env(project, combination), *paths)


# A RabbitMQ project differs from its Redis twin only in these files (checked below), which these
# of its own tests exercise: what its twin's whole suite covers, it runs once.
BROKER_TESTS = (
    "tests/test_health.py",
    "tests/test_jobs.py",
    "tests/test_settings.py",
    "tests/test_worker.py",
)
BROKER_FILES = {
    ".env.example",
    ".github/workflows/ci.yml",
    "README.md",
    "compose.yaml",
    "pyproject.toml",
    f"src/{SLUG}/jobqueue.py",
    f"src/{SLUG}/passwords.py",
    f"src/{SLUG}/reconcile.py",
    f"src/{SLUG}/settings.py",
    "tests/conftest.py",
    "tests/test_health.py",
    "tests/test_settings.py",
}
# Without PostgreSQL, the live clients' news differs too (news.py): a message on Redis for the
# Redis twin, nothing for RabbitMQ (a poll). The RabbitMQ project's own live tests run.
LIVE_NEWS_FILES = {
    f"src/{SLUG}/changefeed.py",
    f"src/{SLUG}/changes.py",
    f"src/{SLUG}/news.py",
    f"src/{SLUG}/worker.py",
    "tests/test_live.py",
}


def broker_files(combination: Combination) -> set[str]:
    """The files in which a RabbitMQ project differs from its Redis twin."""
    news = LIVE_NEWS_FILES if combination.database != "postgresql" else set()
    return BROKER_FILES | news


def broker_tests(combination: Combination) -> tuple[str, ...]:
    """The tests of its own that a RabbitMQ project runs: those its differences reach."""
    news = ("tests/test_live.py",) if combination.database != "postgresql" else ()
    return BROKER_TESTS + news


@combinations_where(lambda c: not broker_aside(c))
def test_a_rabbitmq_project_differs_from_its_redis_twin_only_where_its_broker_tests_reach(
    project: Path, combination: Combination, tmp_path: Path
) -> None:
    twin = combination_with(**{**combination.data, "celery_broker": "redis"})
    other = render(tmp_path / "twin", answers_for(twin))
    differing = {
        name
        for name in rendered_files(project) | rendered_files(other)
        if not (project / name).is_file()
        or not (other / name).is_file()
        or (project / name).read_bytes() != (other / name).read_bytes()
    }
    assert differing - {".copier-answers.yml"} == broker_files(combination)
    for name in broker_tests(combination):
        assert (project / name).is_file(), name


def workflow_env(project: Path, combination: Combination) -> dict[str, str]:
    """The environment the project's CI workflow gives its tests (`jobs.check.env`), each
    server's URL moved to the suite's server of its kind and to a database, Redis database or
    RabbitMQ virtual host of the combination's own, with the workflow's scheme, user and
    password. The suite's own servers accept those (support.services.WORKFLOW_ACCOUNTS; its
    PostgreSQL trusts local connections, the workflow's Redis has no password), as do the
    services of this repository's GitHub workflow."""
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    env = {name: str(value) for name, value in workflow["jobs"]["check"].get("env", {}).items()}
    places = broker_env(combination)
    if combination.database_server:
        places["DATABASE_URL"] = database_url_for(combination)
    for variable, place in places.items():
        env[variable] = moved(env[variable], place)
    # The accounts the suite's own servers were given: a workflow that names others fails here.
    accounts = {"DATABASE_URL": combination.database, "RABBITMQ_URL": "rabbitmq"}
    for variable, service in accounts.items():
        if variable in env and service in WORKFLOW_ACCOUNTS:
            url = urlsplit(env[variable])
            assert (url.username, url.password) == WORKFLOW_ACCOUNTS[service], env[variable]
    return env


def moved(url: str, place: str) -> str:
    """`url`'s scheme, user and password, at the host, port and path of the URL `place`."""
    parts, target = urlsplit(url), urlsplit(place)
    credentials = parts.netloc.rpartition("@")[0]
    location = target.netloc.rpartition("@")[2]
    netloc = f"{credentials}@{location}" if credentials else location
    return urlunsplit(parts._replace(netloc=netloc, path=target.path))


UNREACHABLE = {
    "DATABASE_URL": "{database}://nobody@127.0.0.1:1/nothing",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1//",
}


@combinations_where(
    lambda c: (
        c.database_server
        and c.task_queue == "celery"
        and (broker_aside(c) or stands_for_its_broker(c))
    )
)
def test_own_test_suite_fails_naming_the_variable_of_an_unreachable_service(
    project: Path, venv: Path, combination: Combination
) -> None:
    """A required server that cannot be reached fails the suite, never passes it silently:
    the database for each ORM, mode and database server (with Redis: RabbitMQ's combinations
    differ from those only in the broker), each broker once."""
    variables = ["DATABASE_URL"] if broker_aside(combination) else []
    if stands_for_its_broker(combination):
        variables.append(combination.broker_variable)
    for variable in variables:
        unreachable = UNREACHABLE[variable].format(database=combination.database)
        env = {**project_env(), variable: unreachable}
        if variable == combination.broker_variable:
            env["DATABASE_URL"] = database_url_for(combination)
        python = str(venv / "bin" / "python")
        command = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/test_jobs.py"]
        output = run(command, project, env, expect_failure=True)
        assert f"unreachable at {variable}=" in output, output
        assert "passed" not in output.strip().splitlines()[-1], output


@for_combination(combination_with(database="postgresql", db_mode="sync", task_queue="celery"))
def test_installs_with_pip(project: Path, tmp_path: Path) -> None:
    """`pip install -e .` works as well as `uv sync`: every combination's pyproject.toml has
    the same build system and layout, so one with a large dependency set stands for all (uv
    installs every combination)."""
    pip_venv = tmp_path / "pip-venv"
    run([sys.executable, "-m", "venv", str(pip_venv)], tmp_path)
    python = str(pip_venv / "bin" / "python")
    run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", "."],
        project,
    )
    output = run(
        [python, "-c", f"from {SLUG}.main import create_app; print(create_app().title)"],
        tmp_path,
        {"DATABASE_URL": "postgresql://u@127.0.0.1/db", "VIRTUAL_ENV": ""},
    )
    assert output.strip() == "Inventory"


def settings_fields(project: Path) -> list[str]:
    """The fields of the generated `Settings` class."""
    tree = ast.parse((project / "src" / SLUG / "settings.py").read_text())
    settings = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    return [
        statement.target.id
        for statement in settings.body
        if isinstance(statement, ast.AnnAssign)
        and isinstance(statement.target, ast.Name)
        and statement.target.id != "model_config"
    ]


@combination_param
def test_every_setting_is_documented(project: Path) -> None:
    """`.env.example` and the README's settings table name every setting."""
    fields = settings_fields(project)
    assert "database_url" in fields
    env_example = (project / ".env.example").read_text()
    readme = (project / "README.md").read_text()
    for field in fields:
        variable = field.upper()
        assert re.search(rf"^#?{variable}=", env_example, re.MULTILINE), variable
        assert f"| `{variable}` |" in readme, variable


@combination_param
def test_ci_workflow_is_valid_and_starts_the_services_it_needs(
    project: Path, combination: Combination, actionlint: list[str]
) -> None:
    workflow = project / ".github" / "workflows" / "ci.yml"
    check = Path(sys.executable).parent / "check-jsonschema"
    run([str(check), "--builtin-schema", "vendor.github-workflows", str(workflow)], project)
    run([*actionlint, str(workflow)], project)

    job = yaml.safe_load(workflow.read_text())["jobs"]["check"]
    services = set(job.get("services", {}))
    database = {"postgresql": "postgres", "mysql": "mariadb"}.get(combination.database)
    assert services - {combination.broker_service} == {database} - {None}
    assert {combination.broker_service} - {None} <= services
    assert ("DATABASE_URL" in job.get("env", {})) == combination.database_server
    brokers = {"REDIS_URL", "RABBITMQ_URL"} & set(job.get("env", {}))
    assert brokers == {combination.broker_variable} - {None}
    commands = [step["run"] for step in job["steps"] if "run" in step]
    assert commands == [
        "uv sync",
        "uv run ruff check .",
        "uv run ruff format --check .",
        "uv run mypy",
        "uv run pytest",
    ]


@combination_param
def test_lint_format_and_types_are_clean_by_the_projects_pre_commit_hooks(
    project: Path, venv: Path, tmp_path: Path, mypy_cache: Path
) -> None:
    """The project's hooks are valid, and they pass on the generated code once it is a git
    repository: `ruff check --fix`, `ruff format` (either fails if it changes a file) and
    `mypy --strict` (the project's configuration), all from the project's own environment."""
    config = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"] for repo in config["repos"] for hook in repo["hooks"]}
    assert hooks == {"ruff", "ruff-format", "mypy"}
    pre_commit = str(venv / "bin" / "pre-commit")
    env = {
        **project_env(),
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "MYPY_CACHE_DIR": str(mypy_cache),
    }
    run([pre_commit, "validate-config"], project, env)
    run(["git", "init", "--quiet"], project)
    run(["git", "add", "-A"], project)
    run([pre_commit, "run", "--all-files"], project, env)


@combination_param
def test_dockerfile_is_valid_multi_stage_non_root_and_healthchecked(project: Path) -> None:
    """No Docker engine runs here: hadolint checks the Dockerfile, and this test checks its
    shape and that everything it copies exists."""
    run([str(Path(sys.executable).parent / "hadolint"), "Dockerfile"], project)
    text = (project / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.MULTILINE)) == 2
    assert re.search(r"^USER 10001:10001$", text, flags=re.MULTILINE)
    assert "HEALTHCHECK" in text and "/health" in text
    assert text.rstrip().endswith('CMD ["gunicorn", "-c", "gunicorn.conf.py"]')
    for source in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", text, flags=re.MULTILINE):
        for name in source.split():
            assert (project / name).exists(), name
    ignored = (project / ".dockerignore").read_text().split()
    assert {".venv", ".env", ".git"} <= set(ignored)


@combination_param
def test_compose_file_is_valid_and_starts_what_the_combination_needs(
    project: Path, combination: Combination, venv: Path
) -> None:
    """No Docker engine runs here: the Compose specification's JSON schema checks the file, and
    this test checks its services, their health checks and the order they start in."""
    check = Path(sys.executable).parent / "check-jsonschema"
    run([str(check), "--builtin-schema", "vendor.compose-spec", "compose.yaml"], project)
    services = yaml.safe_load((project / "compose.yaml").read_text())["services"]
    celery = combination.task_queue == "celery"
    backing = {"db"} if combination.database_server else set()
    backing |= {combination.broker_service} if combination.broker_service else set()
    monitoring = {"prometheus", "grafana"}
    assert set(services) == (
        {"migrate", "app"} | backing | ({"worker"} if celery else set()) | monitoring
    )
    for name in monitoring:  # only with `--profile monitoring`
        assert services[name]["profiles"] == ["monitoring"]
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])
    for mount in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        assert (project / mount.split(":")[0]).is_file(), mount

    migrate, *arguments = migrate_command(combination, venv)
    assert services["migrate"]["command"] == [Path(migrate).name, *arguments]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["healthcheck"] == {"disable": True}
    assert services["migrate"].get("depends_on", {}) == {
        name: {"condition": "service_healthy"} for name in backing - {"redis", "rabbitmq"}
    }
    for name in {"app", "worker"} & set(services):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            **{other: {"condition": "service_healthy"} for other in backing},
        }
    for name in set(services) - {"migrate"}:
        assert services[name]["healthcheck"]["test"], name

    for name in {"migrate", "app", "worker"} & set(services):
        service = services[name]
        assert service["build"] == "."
        environment = service["environment"]
        assert environment["ENVIRONMENT"] == "production"
        brokers = {"REDIS_URL", "RABBITMQ_URL"} & set(environment)
        assert brokers == {combination.broker_variable} - {None}
        if combination.database == "postgresql":
            scheme = "postgres" if combination.orm == "tortoise" else "postgresql"
            assert environment["DATABASE_URL"].startswith(f"{scheme}://{SLUG}:${{POSTGRES_PASS")
            assert environment["DATABASE_URL"].endswith(f"@db:5432/{SLUG}")
        elif combination.database == "mysql":
            assert environment["DATABASE_URL"].startswith(f"mysql://{SLUG}:${{MARIADB_PASSWORD")
            assert environment["DATABASE_URL"].endswith(f"@db:3306/{SLUG}")
        else:
            data = Path("/data") / f"{SLUG}.db"
            assert environment["DATABASE_URL"] == sqlite_url(combination, data)
            assert service["volumes"] == ["data:/data"]
    if combination.database == "postgresql":
        db = services["db"]
        assert db["environment"]["POSTGRES_USER"] == db["environment"]["POSTGRES_DB"] == SLUG
        assert "max_connections=100" in db["command"]
    if combination.database == "mysql":
        # The app's user owns its database; the root password is random, never used.
        db = services["db"]
        assert db["environment"]["MARIADB_USER"] == db["environment"]["MARIADB_DATABASE"] == SLUG
        assert db["environment"]["MARIADB_PASSWORD"].startswith("${MARIADB_PASSWORD")
        assert db["environment"]["MARIADB_RANDOM_ROOT_PASSWORD"] == "yes"
        assert db["command"] == ["--max-connections=100"]
        assert db["volumes"] == ["mariadb:/var/lib/mysql"]
    if combination.broker_service == "rabbitmq":
        # The app's user is RabbitMQ's (its guest may connect only from its own container),
        # and the broker keeps its queues on a volume, under a node name that stays the same.
        rabbitmq = services["rabbitmq"]
        assert rabbitmq["environment"]["RABBITMQ_DEFAULT_USER"] == SLUG
        assert rabbitmq["environment"]["RABBITMQ_DEFAULT_PASS"].startswith("${RABBITMQ_PASSWORD")
        url = services["app"]["environment"]["RABBITMQ_URL"]
        assert url.startswith(f"amqp://{SLUG}:${{RABBITMQ_PASSWORD")
        assert url.endswith("@rabbitmq:5672//")
        assert rabbitmq["hostname"] == "rabbitmq"
        assert rabbitmq["volumes"] == ["rabbitmq:/var/lib/rabbitmq"]
    if celery:
        worker = services["worker"]
        # The project's own launcher, which serves the metrics of the jobs, where Prometheus
        # scrapes them.
        assert worker["command"][0] == f"{SLUG}-worker"
        assert (venv / "bin" / worker["command"][0]).is_file()
        port = worker["environment"]["WORKER_METRICS_BIND"].rpartition(":")[2]
        prometheus = yaml.safe_load((project / "monitoring" / "prometheus.yml").read_text())
        jobs = {job["job_name"]: job["static_configs"] for job in prometheus["scrape_configs"]}
        assert jobs["worker"] == [{"targets": [f"worker:{port}"]}]
