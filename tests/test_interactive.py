"""Answer copier's questions through a real pseudo-terminal, the way a person does.

The other tests pass answers with `--data`; these drive the interactive prompts (questionary on
prompt_toolkit) with keystrokes: typed text and Enter for text questions, arrow keys and Enter
for choice lists. They check what the person sees (the prompts, the disabled Tortoise choice and
its reason, the validator's message) and what the generated project ends up with.

What the prompts look like, learnt by driving them:

- A question is shown as "🎤 <help>" (or "🎤 <name> (<type>)" without help), never by its name.
- A text question starts pre-filled with its default as editable text, so typing appends to it:
  the field has to be cleared first (Ctrl-U here, as a shell user would).
- A choice question is "(Use arrow keys)" then one line per choice, " » " marking the pointer and
  "- <title> (<reason>)" marking a choice its validator disables; the pointer skips disabled
  choices.
- A validator's message is shown live under the field, "Validation error for question '<name>':
  <message>", and Enter does nothing until the answer is valid.
- prompt_toolkit redraws only what changed, so the screen text is read as a stream with the ANSI
  sequences removed, and a prompt's full text is only guaranteed when it first appears and when
  it is answered (the answered prompt is redrawn as "🎤 <help>" over "   <answer>").
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest
import yaml

from support.combinations import REPO_ROOT

STARTUP_TIMEOUT = 60  # copier clones the template (with the dirty working tree) first
PROMPT_TIMEOUT = 30
FINISH_TIMEOUT = 60  # rendering the project after the last answer
SCREEN_TAIL = 3000  # characters of recent screen text in failure messages

DOWN = "\x1b[B"
UP = "\x1b[A"
ENTER = "\r"
CLEAR_LINE = "\x15"  # Ctrl-U: delete from the cursor (at the end) to the start of the field

# CSI, OSC, charset and two-character escape sequences.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[@-Z\\-_=>]"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

pytestmark = pytest.mark.xdist_group("interactive")


# --------------------------------------------------------------------------- the questions


@dataclass(frozen=True)
class Question:
    name: str
    prompt: str  # the text that identifies the question on screen
    choices: dict[str, str]  # value -> title, empty for text questions


def _load_questions() -> dict[str, Question]:
    config = yaml.safe_load((REPO_ROOT / "copier.yml").read_text(encoding="utf-8"))
    questions: dict[str, Question] = {}
    for name, spec in config.items():
        if name.startswith("_"):
            continue
        spec = spec if isinstance(spec, dict) else {"default": spec}
        if spec.get("when") is False:
            continue  # derived values are never asked
        help_text = str(spec.get("help") or "").strip()
        # Match on a plain prefix: long help could be wrapped, and help may be templated.
        prompt = help_text.split("{", 1)[0].split("\n", 1)[0][:60].rstrip() if help_text else ""
        if not prompt:
            prompt = name
        choices: dict[str, str] = {}
        raw_choices = spec.get("choices") or {}
        if isinstance(raw_choices, dict):
            for title, value in raw_choices.items():
                if isinstance(value, dict):
                    value = value.get("value", title)
                choices[str(value)] = str(title)
        else:
            choices = {str(item): str(item) for item in raw_choices}
        questions[name] = Question(name=name, prompt=prompt, choices=choices)
    return questions


QUESTIONS = _load_questions()


# --------------------------------------------------------------------------- the terminal


def screen_text(raw: str) -> str:
    """What the terminal printed, as text: escape sequences and carriage returns removed."""
    # Leave out an escape sequence still being received (split across reads).
    last_escape = raw.rfind("\x1b")
    if last_escape != -1 and len(raw) - last_escape < 64 and not _ANSI.match(raw, last_escape):
        raw = raw[:last_escape]
    return _CONTROL.sub("", _ANSI.sub("", raw))


class Terminal:
    """A copier process on a pseudo-terminal, and the text it has printed so far.

    `pos` marks how far the test has read: every wait looks only at text printed after it.
    """

    def __init__(self, child: Any) -> None:
        self.child = child
        self.raw = ""
        self.pos = 0
        self.eof = False

    @property
    def text(self) -> str:
        return screen_text(self.raw)

    def tail(self) -> str:
        return self.text[-SCREEN_TAIL:]

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- recent screen text ---\n{self.tail()}\n--- end ---")

    def _read(self, timeout: float) -> None:
        if self.eof:
            time.sleep(min(timeout, 0.05))
            return
        try:
            self.raw += self.child.read_nonblocking(65536, timeout=max(timeout, 0.01))
        except pexpect.TIMEOUT:
            pass
        except pexpect.EOF:
            self.eof = True

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = PROMPT_TIMEOUT) -> re.Match:
        """Wait until `pattern` (a regex) appears after `pos`, then move `pos` past it."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.text, self.pos)
            if match:
                self.pos = match.end()
                return match
            if self.eof:
                self.fail(f"copier exited while waiting for {regex.pattern!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail(f"timed out after {timeout}s waiting for {regex.pattern!r}")
            self._read(min(remaining, 0.2))

    def wait_for_text(self, text: str, timeout: float = PROMPT_TIMEOUT) -> re.Match:
        return self.wait_for(re.escape(text), timeout)

    def settle(self, quiet: float = 0.3, timeout: float = PROMPT_TIMEOUT) -> None:
        """Read until the terminal has printed nothing for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = len(self.raw)
            self._read(quiet)
            if len(self.raw) == before:
                return
        self.fail(f"the screen kept changing for {timeout}s")

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def wait_for_exit(self, timeout: float = FINISH_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail(f"copier did not exit within {timeout}s")
            self._read(min(remaining, 0.2))
        self.child.close()
        if self.child.exitstatus is None:
            self.fail(f"copier was killed by signal {self.child.signalstatus}")
        return int(self.child.exitstatus)


def prompt_regex(question: Question) -> str:
    return "🎤 " + re.escape(question.prompt)


# --------------------------------------------------------------------------- answering


Answer = str | Callable[[Terminal, Question], None]


def type_text(term: Terminal, question: Question, value: str) -> None:
    """Clear the pre-filled default, type `value`, press Enter and see it accepted."""
    term.send(CLEAR_LINE + value)
    term.send(ENTER)
    expect_answered(term, question, value)


def expect_answered(term: Terminal, question: Question, shown: str) -> None:
    """The answered prompt is redrawn whole: the prompt over the answer."""
    term.wait_for(prompt_regex(question) + r"[^\n]*\n   " + re.escape(shown) + r"(?!\S)")


def read_choices(term: Terminal, question: Question, start: int) -> tuple[list[str], str]:
    """The choice list as first drawn after `start`: (enabled titles in order, pointed title)."""
    shown = term.text[start:]
    enabled: list[str] = []
    positions: dict[str, int] = {}
    for title in question.choices.values():
        found = re.search(r"(?:»| ) (- )?" + re.escape(title), shown)
        if found is None:
            term.fail(f"choice {title!r} of {question.name} is not on screen")
        positions[title] = found.start()
        if not found.group(1):
            enabled.append(title)
    enabled.sort(key=positions.__getitem__)
    pointer = re.search("» (" + "|".join(map(re.escape, question.choices.values())) + ")", shown)
    if pointer is None:
        term.fail(f"no pointer (») in the choice list of {question.name}")
    return enabled, pointer.group(1)


def select(term: Terminal, question: Question, value: str, start: int) -> None:
    """Move the pointer to the choice for `value` with the arrow keys and press Enter."""
    title = question.choices[value]
    term.wait_for_text("(Use arrow keys)")
    for each in question.choices.values():  # the whole list has been drawn
        term.wait_for_text(each)
        term.pos = start
    term.settle()
    enabled, pointed = read_choices(term, question, start)
    if title not in enabled:
        term.fail(f"choice {title!r} of {question.name} is disabled")
    steps = enabled.index(title) - enabled.index(pointed)
    term.send((DOWN if steps > 0 else UP) * abs(steps))
    term.send(ENTER)
    expect_answered(term, question, title)


def answer(term: Terminal, question: Question, start: int, given: Answer | None) -> None:
    if callable(given):
        given(term, question)
    elif question.choices:
        # Enter keeps the default the pointer starts on.
        if given is None:
            term.send(ENTER)
            term.wait_for(prompt_regex(question) + r"[^\n]*\n   (?!\(Use arrow keys\))\S")
        else:
            select(term, question, given, start)
    elif given is None:
        term.send(ENTER)  # accept the pre-filled default
        term.wait_for(prompt_regex(question) + r"[^\n]*\n   ")
    else:
        type_text(term, question, given)


def run_copier(tmp_path: Path, answers: dict[str, Answer]) -> tuple[Path, list[str]]:
    """Run `copier copy` and answer every question it asks; questions not in `answers` keep
    their default. Returns the project directory and the questions in the order asked."""
    settings = tmp_path / "copier-settings.yml"
    # Isolate the user's settings. An empty file would not do: copier 9.19 reads it as None
    # and fails validating its settings.
    settings.write_text("{}\n", encoding="utf-8")
    dst = tmp_path / "project"
    env = {
        **os.environ,
        "COPIER_SETTINGS_PATH": str(settings),
        "TERM": "xterm-256color",
        "PYTHONIOENCODING": "utf-8",
        # pexpect does not answer prompt_toolkit's cursor position request (CPR); without this
        # prompt_toolkit waits for the answer, then warns and redraws every prompt.
        "PROMPT_TOOLKIT_NO_CPR": "1",
    }
    for name in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES"):
        env.pop(name, None)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "copier", "copy", "--vcs-ref", "HEAD", str(REPO_ROOT), str(dst)],
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        codec_errors="replace",
        dimensions=(40, 200),
        timeout=PROMPT_TIMEOUT,
    )
    term = Terminal(child)
    asked: list[str] = []
    unused = set(answers) - set(QUESTIONS)
    assert not unused, f"answers for questions copier.yml does not have: {sorted(unused)}"
    try:
        timeout = STARTUP_TIMEOUT
        last: str | None = None
        while True:
            # The next prompt, or the end of the questions; the prompt just answered is left
            # out because prompt_toolkit may still be redrawing it.
            waiting = [q for name, q in QUESTIONS.items() if name != last]
            alternatives = [f"(?P<q_{i}>{prompt_regex(q)})" for i, q in enumerate(waiting)]
            alternatives.append(r"(?P<done>Copying from template)")
            found = term.wait_for("|".join(alternatives), timeout)
            if found.group("done"):
                break
            index = next(int(k[2:]) for k, v in found.groupdict().items() if k != "done" and v)
            question = waiting[index]
            asked.append(question.name)
            answer(term, question, found.start(), answers.get(question.name))
            last = question.name
            timeout = PROMPT_TIMEOUT
        status = term.wait_for_exit()
        if status != 0:
            term.fail(f"copier exited with status {status}")
    finally:
        if child.isalive():
            child.terminate(force=True)
        child.close(force=True)
    assert "Traceback (most recent call last)" not in term.text, term.tail()
    not_asked = set(answers) - set(asked)
    assert not not_asked, f"copier never asked {sorted(not_asked)}:\n{term.tail()}"
    return dst, asked


def read_answers(dst: Path) -> dict[str, Any]:
    answers_file = dst / ".copier-answers.yml"
    assert answers_file.is_file(), f"no answers file in {dst}"
    data: dict[str, Any] = yaml.safe_load(answers_file.read_text(encoding="utf-8"))
    return data


# --------------------------------------------------------------------------- the tests


def test_non_default_answers_typed_at_the_prompts(tmp_path: Path) -> None:
    expected = {
        "project_name": "Inventory API",
        "project_slug": "inventory",
        "database": "postgresql",
        "db_mode": "sync",
        "orm": "sqlalchemy",
        "task_queue": "celery",
        "celery_broker": "redis",
        "pool_size": 3,
        "max_overflow": 2,
        "pool_timeout": 7.5,
        "pool_recycle": 600,
        "workers": 4,
    }
    dst, asked = run_copier(tmp_path, {name: str(value) for name, value in expected.items()})
    assert asked[:2] == ["project_name", "project_slug"], asked

    answers = read_answers(dst)
    for name, value in expected.items():
        assert answers.get(name) == value, f"{name}: {answers.get(name)!r} != {value!r}"
        assert type(answers.get(name)) is type(value), f"{name}: {answers.get(name)!r}"

    settings = (dst / "src" / "inventory" / "settings.py").read_text(encoding="utf-8")
    assert re.search(r"pool_size\b[^\n]*default=3\b", settings), settings
    assert re.search(r"max_overflow\b[^\n]*default=2\b", settings), settings
    assert re.search(r"pool_timeout\b[^\n]*default=7\.5\b", settings), settings
    assert re.search(r"pool_recycle\b[^\n]*default=600\b", settings), settings
    gunicorn = (dst / "gunicorn.conf.py").read_text(encoding="utf-8")
    assert re.search(r"^workers\s*=[^\n]*\b4\b", gunicorn, re.MULTILINE), gunicorn
    assert (dst / "src" / "inventory" / "worker.py").is_file(), "celery answer has no worker.py"


def test_tortoise_is_shown_disabled_with_its_reason_when_sync(tmp_path: Path) -> None:
    seen: dict[str, str] = {}

    def refuse_tortoise(term: Terminal, question: Question) -> None:
        start = term.pos
        term.wait_for_text("(Use arrow keys)")
        term.wait_for(r"- " + re.escape(question.choices["tortoise"]) + r" \(")
        reason = term.wait_for(r"Tortoise ORM is async-only[^\n)]*")
        seen["reason"] = reason.group(0)
        term.settle()
        enabled, pointed = read_choices(term, question, start)
        assert enabled == [question.choices["sqlalchemy"]], enabled
        assert pointed == question.choices["sqlalchemy"]
        # A person pressing down to reach Tortoise: the pointer skips it, Enter picks SQLAlchemy.
        term.send(DOWN)
        term.settle()
        term.send(ENTER)
        expect_answered(term, question, question.choices["sqlalchemy"])

    dst, _ = run_copier(tmp_path, {"db_mode": "sync", "orm": refuse_tortoise})
    assert "choose db_mode=async" in seen["reason"], seen
    answers = read_answers(dst)
    assert answers["db_mode"] == "sync"
    assert answers["orm"] == "sqlalchemy"


def test_pool_size_zero_is_refused_at_the_prompt(tmp_path: Path) -> None:
    def zero_then_two(term: Terminal, question: Question) -> None:
        term.send(CLEAR_LINE + "0")
        term.send(ENTER)
        term.wait_for(r"pool_size must be at least 1[^\n]*")
        # Still at the same prompt: nothing else is asked and nothing is rendered.
        start = term.pos
        term.settle(quiet=1.0)
        later = term.text[start:]
        others = [q.prompt for q in QUESTIONS.values() if q.name != question.name]
        assert not any(prompt in later for prompt in [*others, "Copying from template"]), (
            f"copier went on after pool_size 0:\n{term.tail()}"
        )
        assert term.child.isalive(), f"copier exited after pool_size 0:\n{term.tail()}"
        type_text(term, question, "2")

    dst, asked = run_copier(tmp_path, {"pool_size": zero_then_two})
    assert asked.count("pool_size") == 1, asked
    answers = read_answers(dst)
    assert answers["pool_size"] == 2
    slug = answers["project_slug"]
    settings = (dst / "src" / slug / "settings.py").read_text(encoding="utf-8")
    assert re.search(r"pool_size\b[^\n]*default=2\b", settings), settings
