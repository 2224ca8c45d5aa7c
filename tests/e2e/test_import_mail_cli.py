"""`crmsync import-mail` run as a process (issue #13 point 15): the printed counts, the
rejections as PATH[#n]: reason on stderr, the exit codes, and a second run that changes nothing;
embedded (--db) and with --postgres."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from processes import CRMSYNC
from test_cli import SETUP, jsonl

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mime"
GOOD = ["outlook-unquoted-boundary.eml", "richtext-only.eml", "bom-before-headers.eml",
        "malformed-header-line.eml", "obsolete-from-syntax.eml", "in-reply-to-prose.eml"]
BAD = ["from-words-without-brackets.eml", "from-junk-bang-path.eml"]


def crmsync(tmp: Path, postgres: str | None, *args: str,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CRMSYNC_POSTGRES_URL"}
    env["PYTHONPATH"] = os.getcwd()
    flags = ["--postgres", postgres] if postgres else []
    return subprocess.run([*CRMSYNC, "--db", str(tmp / "crmsync.db"), *flags, *args],
                          input=stdin, capture_output=True, text=True, timeout=120, check=False,
                          env=env)


def story(tmp: Path, postgres: str | None) -> None:
    setup = crmsync(tmp, postgres, "apply", "-", stdin=jsonl(SETUP))
    assert setup.returncode == 0, setup.stderr
    mbox = tmp / "archive.mbox"
    mbox.write_bytes(b"".join(b"From someone@x Mon Jan  5 09:00:00 2026\n"
                              + (FIXTURES / name).read_bytes().replace(b"\r\n", b"\n") + b"\n"
                              for name in [*GOOD, *BAD]))
    imp = ("import-mail", "--tenant", "acme", "--mailbox", "mb")

    first = crmsync(tmp, postgres, *imp, str(mbox))
    assert first.returncode == 1, first.stderr
    assert first.stdout == f"{len(GOOD)} imported, 0 unchanged, 2 rejected\n"
    assert first.stderr.splitlines() == [
        f"{mbox}#7: invalid From address: 'Big Bug bb@bug.com'",
        f"{mbox}#8: invalid From address: 'develop!nextmime@ebony@sblab.att.com'"]

    good = [str(FIXTURES / name) for name in GOOD]
    again = crmsync(tmp, postgres, *imp, *good)  # the same messages as .eml files
    assert (again.returncode, again.stdout, again.stderr) == \
        (0, f"0 imported, {len(GOOD)} unchanged, 0 rejected\n", "")

    unknown = crmsync(tmp, postgres, "import-mail", "--tenant", "acme", "--mailbox", "nope",
                      *good)
    assert unknown.returncode == 2 and "no mailbox 'nope'" in unknown.stderr

    listed = crmsync(tmp, postgres, "query", "mailbox", "--tenant", "acme", "--viewer", "mia",
                     "--json")
    assert listed.returncode == 0, listed.stderr
    for subject in ("Angebot", "richtext", "obsolete syntax", "Re: meeting"):
        assert f'"{subject}"' in listed.stdout


def test_s14_import_mail_process_embedded(tmp_path: Path) -> None:
    story(tmp_path, None)


def test_s14_import_mail_process_postgres(tmp_path: Path, postgres_url: str) -> None:
    story(tmp_path, postgres_url)


def _read_all(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end is closed
            return out
        if not chunk:
            return out
        out += chunk


def test_import_mail_draws_a_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    setup = crmsync(tmp_path, None, "apply", "-", stdin=jsonl(SETUP))
    assert setup.returncode == 0, setup.stderr
    env = {k: v for k, v in os.environ.items() if k != "CRMSYNC_POSTGRES_URL"}
    env.update({"PYTHONPATH": os.getcwd(), "TERM": "xterm", "COLUMNS": "100"})
    env.pop("NO_COLOR", None)
    main, terminal = os.openpty()
    try:
        proc = subprocess.run([*CRMSYNC, "--db", str(tmp_path / "crmsync.db"), "import-mail",
                               "--tenant", "acme", "--mailbox", "mb",
                               str(FIXTURES / GOOD[0])], stdout=terminal,
                              stderr=subprocess.PIPE, timeout=120, check=False, env=env)
        os.close(terminal)
        shown = _read_all(main).decode(errors="replace")
    finally:
        os.close(main)
    assert proc.returncode == 0, proc.stderr
    assert "1 imported, 0 unchanged, 0 rejected" in shown
    assert "\x1b[?25l" in shown  # rich hides the cursor while it draws the bar
    piped = crmsync(tmp_path, None, "import-mail", "--tenant", "acme", "--mailbox", "mb",
                    str(FIXTURES / GOOD[0]))
    assert piped.stdout == "0 imported, 1 unchanged, 0 rejected\n"  # no escape codes in a pipe
