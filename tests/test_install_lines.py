"""Every install line the documentation gives works today. grantkeeper is not on PyPI yet, so a
line that asks a registry for the name ``grantkeeper`` fails for a new user, or installs
whatever someone else published under that name. README.md and docs/*.md may install or run
grantkeeper through pip, pipx, uvx or ``uv tool`` only from a local path (a clone, ``.``, a
built wheel or sdist) or from the repository's git URL, in their code blocks, their inline
code and the desktop hosts' JSON config lines alike."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath

import pytest

pytestmark = pytest.mark.portable

ROOT = Path(__file__).resolve().parent.parent
"""The checkout (not from tests.helpers: this module runs on macOS and Windows too)."""
DOCUMENTS = sorted([*ROOT.glob("docs/*.md"), ROOT / "README.md"])

REPOSITORY = re.compile(
    r"(?:grantkeeper(?:\[[\w,\s-]*\])?\s*@\s*)?"
    r"git\+https://github\.com/grantkeeper/grantkeeper(?:\.git)?(?:@[\w./+-]+)?",
    re.IGNORECASE,
)
"""The repository's git URL, bare or as ``grantkeeper[extras] @ URL``, optionally at a ref."""
EXTRAS = re.compile(r"\[[\w,\s-]*\]$")
"""The ``[extras]`` a path or a name may end with."""
WINDOWS_PATH = re.compile(r"[A-Za-z]:[\\/]")
FENCE = re.compile(r"^```[ \t]*([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
"""A fenced code block: its language and its text."""
INLINE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
"""An inline code span, which may wrap onto the next line of its paragraph."""
ARGS = re.compile(r'"args"\s*:\s*\[')
"""The start of a JSON config's argument list (a desktop host's server entry)."""
COMMAND = re.compile(r'"command"\s*:\s*"((?:[^"\\]|\\.)*)"')
JSON_STRING = re.compile(r'\s*("(?:[^"\\]|\\.)*")\s*,?')
INSTALLER_WORD = re.compile(r"\b(?:pip3?|pipx|uvx|uv)\b")
"""A line without one of these words installs nothing through the tools this file checks."""
SKIPPED_LANGUAGES = {"python", "py", "pycon", "toml", "text", "ini", "yaml", "yml"}
"""Fenced blocks that hold no shell or JSON (their lines would not parse as shell words)."""
JSON_LANGUAGES = {"json", "jsonc", "json5"}

PIPS = {"pip", "pip3", "pip3.11", "pip3.12", "pip3.13"}
VALUE_OPTIONS = {
    "-c", "--constraint", "--constraints", "-r", "--requirement", "-i", "--index-url",
    "--extra-index-url", "--index", "--default-index", "-f", "--find-links", "-t", "--target",
    "--prefix", "--root", "--python", "-p", "--platform", "--python-version", "--src",
    "--implementation", "--abi", "--upgrade-strategy", "--progress-bar", "--report", "--log",
    "--cache-dir", "--timeout", "--retries", "--proxy", "--trusted-host", "--cert",
    "--client-cert", "--exists-action", "--no-binary", "--only-binary", "-C",
    "--config-settings", "--root-user-action", "--pip-args", "--suffix", "--backend",
    "--with-requirements", "--overrides", "--build-constraints", "--directory", "--project",
    "--config-file", "--env-file", "--resolution", "--prerelease", "--exclude-newer",
    "--refresh-package", "--upgrade-package", "-P", "--reinstall-package", "--link-mode",
}  # fmt: skip
"""Options of pip, pipx and uv whose next word is their value, not a requirement."""
REQUIREMENT_OPTIONS = {"-e", "--editable", "--with", "--with-editable", "--preinstall"}
"""Options whose value is one more requirement to install."""
SOURCE_OPTIONS = {"--from", "--spec"}
"""uvx's and pipx run's option naming the package the command comes from."""
SEPARATORS = {";", "&&", "||", "|", "&"}


def local_path(requirement: str) -> bool:
    """Whether ``requirement`` is a path on this machine (a clone, ``.``, a wheel or sdist),
    with or without ``[extras]``: nothing is asked of a registry for it."""
    path = EXTRAS.sub("", requirement.strip())
    if not path or "://" in path or re.search(r"\s@\s", path):
        return False
    return (
        path in (".", "..")
        or path.startswith(("./", "../", "/", "~/", ".\\", "..\\"))
        or WINDOWS_PATH.match(path) is not None
        or path.endswith((".whl", ".tar.gz"))
    )


def allowed(requirement: str) -> bool:
    """Whether ``requirement`` installs grantkeeper as it exists today."""
    return local_path(requirement) or REPOSITORY.fullmatch(requirement.strip()) is not None


def names_grantkeeper(requirement: str) -> bool:
    """Whether ``requirement`` is about grantkeeper (another package's line is not checked)."""
    return "grantkeeper" in requirement.lower()


def _install_requirements(words: list[str]) -> list[str]:
    """What ``pip install``, ``uv pip install``, ``uv add`` or ``pipx install`` installs: each
    positional word, and the value of ``-e``; other options and their values are skipped."""
    found: list[str] = []
    rest = list(words)
    while rest:
        word = rest.pop(0)
        option, equals, value = word.partition("=")
        if word in REQUIREMENT_OPTIONS and rest:
            found.append(rest.pop(0))
        elif equals and option in REQUIREMENT_OPTIONS:
            found.append(value)
        elif word in VALUE_OPTIONS and rest:
            rest.pop(0)
        elif word == "--":
            found.extend(rest)
            break
        elif not word.startswith("-"):
            found.append(word)
    return found


def _tool_requirements(words: list[str]) -> list[str]:
    """What ``uvx``, ``uv tool run|install`` or ``pipx run`` installs: ``--from``/``--spec``,
    else the tool's own name (``uvx grantkeeper`` asks the registry for ``grantkeeper``), and
    every ``--with``. The words after the tool's name are its arguments."""
    source: list[str] = []
    found: list[str] = []
    rest = list(words)
    while rest:
        word = rest.pop(0)
        option, equals, value = word.partition("=")
        if word in SOURCE_OPTIONS and rest:
            source.append(rest.pop(0))
        elif equals and option in SOURCE_OPTIONS:
            source.append(value)
        elif word in REQUIREMENT_OPTIONS and rest:
            found.append(rest.pop(0))
        elif equals and option in REQUIREMENT_OPTIONS:
            found.append(value)
        elif word in VALUE_OPTIONS and rest:
            rest.pop(0)
        elif not word.startswith("-"):
            if not source:
                source.append(word)
            break
    return source + found


def requirements_of(argv: list[str]) -> list[str]:
    """The requirements one command installs or runs through pip, pipx, uvx or ``uv tool``
    (after ``sudo``, ``python -m`` or a path such as ``.venv/bin/pip``); [] for any other."""
    names = [PurePosixPath(word.replace("\\", "/")).name for word in argv]
    for at, name in enumerate(names):
        after = argv[at + 1 :]
        if name in PIPS and after[:1] == ["install"]:
            return _install_requirements(after[1:])
        if name == "pipx" and after[:1] == ["install"]:
            return _install_requirements(after[1:])
        if name == "pipx" and after[:1] == ["run"]:
            return _tool_requirements(after[1:])
        if name == "uvx":
            return _tool_requirements(after)
        if name == "uv" and after[:2] in (["tool", "run"], ["tool", "install"]):
            return _tool_requirements(after[2:])
        if name == "uv" and after[:2] == ["pip", "install"]:
            return _install_requirements(after[2:])
        if name == "uv" and after[:1] == ["add"]:
            return _install_requirements(after[1:])
    return []


def shell_commands(line: str) -> list[list[str]]:
    """The commands of one shell line, each as its words (a ``#`` word starts a comment)."""
    lexer = shlex.shlex(line.removeprefix("$ "), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word.startswith("#"):
            break
        if word in SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(word)
    return [command for command in commands if command]


def json_commands(text: str) -> list[list[str]]:
    """Each JSON ``"args": [...]`` list in ``text`` as a command line: the ``"command"`` before
    it and its strings. A list without a command in sight is taken as uvx's, the launcher whose
    ``--from`` names the package; a list cut short (``...``) ends at its last string."""
    commands: list[list[str]] = []
    previous = 0
    for match in ARGS.finditer(text):
        named = COMMAND.findall(text, previous, match.start())
        launcher = json.loads(f'"{named[-1]}"') if named else "uvx"
        args: list[str] = []
        at = match.end()
        while found := JSON_STRING.match(text, at):
            args.append(json.loads(found.group(1)))
            at = found.end()
        commands.append([launcher, *args])
        previous = at
    return commands


def snippets(markdown: str) -> list[tuple[str, str]]:
    """What a user would copy from ``markdown``, as (kind, text): ``json`` for a JSON config
    block or a code span holding ``"args"``, else ``shell`` for one line of a code block or
    one inline code span (joined when it wraps)."""
    found: list[tuple[str, str]] = []
    for language, body in FENCE.findall(markdown):
        if language.lower() in JSON_LANGUAGES or ARGS.search(body):
            found.append(("json", body))
        elif language.lower() not in SKIPPED_LANGUAGES:
            logical = re.sub(r"\\\n", " ", body)  # a continued line is one command
            found.extend(("shell", line) for line in logical.splitlines() if line.strip())
    prose = FENCE.sub("", markdown)
    for _, span in INLINE.findall(prose):
        text = " ".join(span.split())
        found.append(("json" if ARGS.search(text) else "shell", text))
    return found


def install_requirements(markdown: str) -> list[tuple[str, str]]:
    """(snippet, requirement) for every requirement that a pip, pipx, uvx or ``uv tool`` line
    of ``markdown`` installs or runs."""
    found: list[tuple[str, str]] = []
    for kind, text in snippets(markdown):
        if kind == "json":
            commands = json_commands(text)
        elif INSTALLER_WORD.search(text):
            try:
                commands = shell_commands(text)
            except ValueError:  # unbalanced quotes: judged whole, so a broken line fails
                found.append((text, text))
                continue
        else:
            continue
        for argv in commands:
            found.extend((text.strip(), requirement) for requirement in requirements_of(argv))
    return found


def violations(markdown: str) -> list[str]:
    """Each line of ``markdown`` that installs grantkeeper in a way that does not work today."""
    return [
        f"{snippet!r}: {requirement!r}"
        for snippet, requirement in install_requirements(markdown)
        if names_grantkeeper(requirement) and not allowed(requirement)
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_every_install_line_of_the_documentation_works_before_a_release(document: Path) -> None:
    """A line that names the bare distribution fails today, or installs a stranger's package."""
    assert not violations(document.read_text(encoding="utf-8"))


def test_the_readme_gives_each_way_in_and_the_checker_sees_them() -> None:
    """The README installs from a clone and from the git URL, runs with uvx from both, and
    configures the desktop hosts with the git URL; seeing them all shows the checker read
    the code blocks, the inline code and the JSON config lines."""
    found = install_requirements((ROOT / "README.md").read_text(encoding="utf-8"))
    requirements = {requirement for _, requirement in found}
    git = "grantkeeper[mcp] @ git+https://github.com/grantkeeper/grantkeeper"
    assert {"./grantkeeper", "./grantkeeper[mcp]", ".[mcp]", git} <= requirements, found
    configs = [requirement for snippet, requirement in found if '"command": "uvx"' in snippet]
    assert configs.count(git) == 2, configs  # Claude Desktop and Cursor's line, VS Code's
    assert any(s.startswith("uvx --from ./grantkeeper ") for s, _ in found), found
    assert any(s.startswith("pipx install") and r == git for s, r in found), found


def _as_markdown(line: str) -> list[str]:
    """``line`` as a user may meet it: in a code block of its kind (JSON for a host's config
    line, else shell), or as inline code in a sentence."""
    block = "jsonc" if '"args"' in line else "sh"
    return [f"```{block}\n{line}\n```\n", f"Run `{line}` first.\n"]


REJECTED = [
    "pip install grantkeeper",
    "pip install 'grantkeeper[mcp]'",
    "uvx grantkeeper status",
    "uvx --from 'grantkeeper[mcp]' grantkeeper proxy URL",
    '"args": ["--from", "grantkeeper[mcp]", "grantkeeper", "proxy", "URL"]',
    '"args": ["--from", "grantkeeper[mcp]", ...]',
    '{"command": "uvx", "args": ["--from", "grantkeeper[mcp]", "grantkeeper", "proxy", "URL"]}',
    '{"command": "uvx", "args": ["grantkeeper", "proxy", "URL"]}',
    "pipx install 'grantkeeper[mcp]'",
    "pipx run grantkeeper status",
    "pip install -c constraints.txt grantkeeper",
    ".venv/bin/python -m pip install --upgrade 'grantkeeper[keyring]==0.1.0'",
    "uv tool install grantkeeper",
    "uv pip install grantkeeper",
    "uvx --with grantkeeper mcp",
    "cd /tmp && pip install 'grantkeeper[mcp]'  # a comment",
    "pip install 'grantkeeper[mcp] @ git+https://github.com/someone-else/grantkeeper'",
    "pip install 'grantkeeper @ https://example.com/grantkeeper-0.1.0-py3-none-any.whl'",
]
"""Lines that ask a registry (or a stranger's repository) for grantkeeper."""

ACCEPTED = [
    "pip install ./grantkeeper",
    "pip install './grantkeeper[mcp]'",
    "pip install -e .",
    "pip install -e '.[mcp]'",
    "pip install .",
    "pip install -c constraints.txt '.[mcp]'",
    "pip install 'grantkeeper[mcp] @ git+https://github.com/grantkeeper/grantkeeper'",
    "pip install git+https://github.com/grantkeeper/grantkeeper@v0.1.0",
    "pip install ./dist/grantkeeper-0.1.0-py3-none-any.whl",
    "pip install dist/grantkeeper-0.1.0.tar.gz",
    "pipx install 'grantkeeper[mcp] @ git+https://github.com/grantkeeper/grantkeeper'",
    "pipx install './grantkeeper[mcp]'",
    "uvx --from ./grantkeeper grantkeeper status",
    "uvx --from 'grantkeeper[mcp] @ git+https://github.com/grantkeeper/grantkeeper' "
    "grantkeeper proxy URL",
    "uvx --from './dist/grantkeeper-0.1.0-py3-none-any.whl[mcp]' grantkeeper proxy URL",
    "uv tool install 'grantkeeper[mcp] @ git+https://github.com/grantkeeper/grantkeeper@abc123'",
    '{"command": "uvx", "args": ["--from", '
    '"grantkeeper[mcp] @ git+https://github.com/grantkeeper/grantkeeper", '
    '"grantkeeper", "proxy", "URL"]}',
    '"args": ["--from", "/home/me/grantkeeper[mcp]", "grantkeeper", "proxy", "URL"]',
    '"args": ["--from", "C:\\\\Users\\\\me\\\\grantkeeper[mcp]", "grantkeeper", "proxy", "URL"]',
]
"""The forms the README and docs use, and their close relatives."""


@pytest.mark.parametrize("line", REJECTED)
def test_the_checker_rejects_the_registry_name(line: str) -> None:
    """Each such line is caught in a code block and as inline code."""
    for markdown in _as_markdown(line):
        assert violations(markdown), markdown


@pytest.mark.parametrize("line", ACCEPTED)
def test_the_checker_accepts_a_path_or_the_repository(line: str) -> None:
    """Each accepted line is read as an install (so passing is not a miss), and passes."""
    for markdown in _as_markdown(line):
        assert install_requirements(markdown), markdown
        assert not violations(markdown), markdown


def test_a_wrapped_inline_command_is_read_whole() -> None:
    """An inline command the paragraph wraps is one command, as the reader copies it."""
    markdown = "pinned (`pip install -c constraints.txt\ngrantkeeper`), the lowest\n"
    assert violations(markdown)
    assert not violations(markdown.replace("grantkeeper`", "'.[mcp]'`"))


def test_other_packages_and_prose_are_left_alone() -> None:
    """Only grantkeeper's lines are judged: other tools, and the future-tense prose naming
    the registry form without code formatting, pass."""
    markdown = (
        "```sh\npip install -c constraints.txt uv\nuvx ruff check .\n```\n"
        "After the first release, pip install grantkeeper will work too.\n"
        "```python\nimport grantkeeper  # pip install grantkeeper's 'quote\n```\n"
    )
    assert violations(markdown) == []
