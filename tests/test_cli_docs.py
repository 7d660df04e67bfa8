"""The README's "Command line" section against the CLI it documents.

- ``logstore docs "shell completion"`` prints the completion setup from the README installed with
  the package, and that setup really installs a completion in bash;
- every command ``logstore --help`` lists has a row in the command table, naming every option of
  the command (by one of its names);
- the backup/restore commands of "Backup and restore", run by bash exactly as written, restore a
  topic with keys, headers, timestamps, a tombstone and bytes that are not UTF-8, record for
  record, and the failure the section warns about happens as it says.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

import logstore
from helpers import run
from logstore.cli import docs as docs_module
from logstore.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
BASH_EVAL = 'eval "$(_LOGSTORE_COMPLETE=bash_source logstore)"'
T0 = 1_700_000_000_000


def readme_text():
    with open(README, encoding="utf-8") as f:
        return f.read()


def section(title):
    """The README section under the heading ``title`` (any level), through docs' own parser."""
    found = docs_module.section(readme_text(), title)
    assert found is not None, f"README has no section {title!r}"
    return found


def code_block(text, lang="sh"):
    m = re.search(r"^```" + lang + r"\n(.*?)^```", text, re.S | re.M)
    assert m, f"no ```{lang} block in:\n{text[:300]}"
    return m.group(1)


@pytest.fixture
def shim(tmp_path):
    """A directory holding a ``logstore`` command that runs this checkout's CLI, and the
    environment with it first on PATH (what a user's shell has after installing)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "logstore"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m logstore.cli "$@"\n')
    script.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=ROOT + (os.pathsep + os.environ["PYTHONPATH"]
                                  if os.environ.get("PYTHONPATH") else ""))
    env.pop("_LOGSTORE_COMPLETE", None)
    return env


def bash(script, cwd, env):
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


# ------------------------------------------------------------------------------ docs
def test_the_installed_readme_is_this_readme():
    # `logstore docs` reads the package metadata, written at install time: an install older
    # than README.md serves old docs (pip install -e . again after changing README.md).
    same = docs_module.readme() == readme_text()  # (no 75 kB diff in the failure)
    assert same, "the installed README differs from README.md: run `pip install -e .` again"


def test_docs_shell_completion_prints_the_setup_for_each_shell():
    r = run("docs", "shell completion")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("### Shell completion\n")
    assert BASH_EVAL in r.stdout
    assert 'eval "$(_LOGSTORE_COMPLETE=zsh_source logstore)"' in r.stdout
    assert "_LOGSTORE_COMPLETE=fish_source logstore" in r.stdout
    assert "## " not in r.stdout.replace("### Shell completion", "")  # that section only
    # `logstore --help` sends the reader there.
    assert 'logstore docs "shell completion"' in run("--help").stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_documented_bash_line_installs_a_completion(shim, tmp_path):
    setup = section("shell completion")
    assert BASH_EVAL in setup
    r = bash(f"{BASH_EVAL}\ncomplete -p logstore", tmp_path, shim)
    assert r.returncode == 0, r.stderr
    assert "_logstore_completion" in r.stdout and r.stdout.rstrip().endswith(" logstore")
    # What the completion function asks the command for: the commands starting with "gr".
    env = dict(shim, _LOGSTORE_COMPLETE="bash_complete", COMP_WORDS="logstore gr",
               COMP_CWORD="1")
    out = subprocess.run(["logstore"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["plain,groups"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_sources_print_a_script(shim, tmp_path, shell):
    env = dict(shim, _LOGSTORE_COMPLETE=f"{shell}_source")
    out = subprocess.run(["logstore"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "_logstore_completion" in out.stdout


# ------------------------------------------------------------------------------ command table
def help_commands():
    """The command names ``logstore --help`` lists."""
    r = run("--help")
    assert r.exit_code == 0
    listing = r.stdout.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    assert len(names) >= 18 and "consume" in names and "docs" in names
    return names


def table_rows():
    """``{command: row text}`` of the table in "## Command line" (a row may document two
    commands; its first cell starts with `logstore NAME`)."""
    rows = {}
    for line in section("command line").splitlines():
        if not line.startswith("| `logstore "):
            continue
        first_cell = line.split(" | ", 1)[0]
        for name in re.findall(r"`logstore (\w+)", first_cell):
            rows[name] = rows.get(name, "") + line
    return rows


def test_every_command_has_a_row_naming_every_option():
    rows = table_rows()
    commands = help_commands()
    assert sorted(commands) == sorted(main.commands)
    assert not set(commands) - set(rows), f"no README row for {set(commands) - set(rows)}"
    assert not set(rows) - set(commands), f"README rows for no command: {set(rows) - set(commands)}"
    # Options every store command shares are explained once, above the table.
    shared = {"--help", "--quiet", "--topic", "--partition"}
    for name in commands:
        row = rows[name]
        for param in main.commands[name].params:
            opts = [o for o in param.opts + param.secondary_opts if o.startswith("-")]
            if not opts or set(opts) & shared:
                continue
            assert any(re.search(re.escape(o) + r"(?![\w-])", row) for o in opts), \
                f"README row of `logstore {name}` does not name {'/'.join(opts)}"


# ------------------------------------------------------------------------------ backup/restore
def build_shop(root, partitions=4):
    """Topic "orders": keys (one not UTF-8), headers (binary, empty), timestamps out of order,
    a tombstone, an empty value, unkeyed records."""
    with logstore.Store.open(root, fsync="never", dedup_window_s=0,
                             retention_check_interval_s=0) as s:
        t = s.topic("orders", partitions=partitions)
        t.publish(b"v1", key=b"user-1", headers={"h": b"x", "bin": b"\xff\x00"},
                  timestamp_ms=T0)
        t.publish(b"\xfe\xff binary", key=b"\x80key", timestamp_ms=T0 + 1)
        t.publish(None, key=b"user-1", timestamp_ms=T0 + 2)  # tombstone of user-1
        t.publish(b"", headers={"empty": b""}, timestamp_ms=T0 - 10**11)  # older than the rest
        for i in range(40):
            key = None if i % 5 == 0 else b"user-%d" % (i % 9)
            headers = {"n": str(i).encode()} if i % 2 else None
            t.publish(b"order %d \xc3\xa9" % i, key=key, headers=headers,
                      timestamp_ms=T0 + 1000 * i)


def topic_records(root, topic="orders"):
    """Every field of every record, per partition."""
    with logstore.Store.open(root, readonly=True, dedup_window_s=0) as s:
        t = s.get_topic(topic)
        return [[(r.offset, r.timestamp_ms, r.key, r.value, dict(r.headers))
                 for r in log.replay()] for log in t.partitions]


def backup_commands():
    block = code_block(section("backup and restore"))
    commands = [line for line in block.splitlines() if line.startswith("logstore ")]
    assert any(c.startswith("logstore replay ") and "> " in c for c in commands), block
    assert any(c.startswith("logstore produce ") and "< " in c for c in commands), block
    return block


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_backup_and_restore_as_written_round_trips_every_field(shim, tmp_path):
    block = backup_commands()
    # The block names its store and partition count; the source here matches them.
    m = re.search(r"^logstore replay (\S+) ", block, re.M)
    parts = int(re.search(r"--partitions (\d+)", block).group(1))
    src = tmp_path / m.group(1)
    src.parent.mkdir(parents=True, exist_ok=True)
    build_shop(str(src), partitions=parts)
    before = topic_records(str(src))
    assert sum(map(len, before)) == 44 and all(before)  # every partition has records

    r = bash("set -e -o pipefail\n" + block, tmp_path, shim)
    assert r.returncode == 0, r.stderr
    restored = re.search(r"^logstore produce (\S+) ", block, re.M).group(1)
    after = topic_records(str(tmp_path / restored))
    assert after == before  # offsets, timestamps, keys, values (tombstone), headers
    assert any(rec[3] is None for p in after for rec in p)
    assert topic_records(str(src)) == before  # the backup changed nothing


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_restore_into_too_few_partitions_stops_with_exit_2_as_documented(shim, tmp_path):
    text = section("backup and restore")
    assert "`--create` without `--partitions` makes one partition" in text
    build_shop(str(tmp_path / "src"), partitions=2)
    before = topic_records(str(tmp_path / "src"))
    r = bash("logstore replay src --topic orders --format jsonl > t.jsonl && "
             "logstore produce dst --topic orders --format jsonl --create < t.jsonl",
             tmp_path, shim)
    assert r.returncode == 2
    assert f"Written in all: {len(before[0])} records" in r.stderr
    # What was written is partition 0, whole and intact; nothing of partition 1.
    assert topic_records(str(tmp_path / "dst")) == [before[0]]
