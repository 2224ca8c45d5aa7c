"""A private Dovecot IMAP server for the IMAP client tests (issue #4).

`/usr/sbin/dovecot` missing -> Debian's `dovecot-imapd` is installed (`apt-get update` and
`apt-get install -y dovecot-imapd`, as root; the package's own service is not started in
containers, and nothing here uses it). Every server then runs from its own configuration in a
temporary directory: loopback only, on a free port (never 143/993), no TLS, plaintext auth,
users in a passwd-file, maildirs, base/state dirs and the log under that directory. Nothing
system-wide is read or changed. CONDSTORE/QRESYNC are built into Dovecot 2.3 (no plugin).

A failed install or start skips the test with the reason, or fails it under
CRMSYNC_REQUIRE_SERVICES=1 (like the PostgreSQL and NATS fixtures in conftest.py).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from services import missing

DOVECOT = Path("/usr/sbin/dovecot")


def ensure_dovecot() -> None:
    """Install dovecot-imapd from Debian when the binary is missing (needs root and apt)."""
    if DOVECOT.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        missing("Dovecot is not installed and cannot be (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "dovecot-imapd"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                                  stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            missing(f"{' '.join(cmd)} failed: {exc}")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            missing(f"{' '.join(cmd)} exited {done.returncode}: {' | '.join(tail)}")
    if not DOVECOT.exists():
        missing("dovecot-imapd installed but /usr/sbin/dovecot is still missing")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DovecotServer:
    """One private Dovecot; `add_user` before logging in; `stop()` ends it and removes the files."""

    def __init__(self, special_use: dict[str, str] | None = None) -> None:
        """`special_use`: folder name -> RFC 6154 attribute (`\\Junk`, ...) announced in LIST
        (with SPECIAL-USE); without it no folder is flagged and the capability is absent."""
        self.special_use = dict(special_use or {})
        self.root = Path(tempfile.mkdtemp(prefix="crmsync-dovecot-"))
        self.root.chmod(0o755)  # the mail processes run as the `dovecot` user when we are root
        self.host = "127.0.0.1"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._passwd = self.root / "passwd"
        self._passwd.write_text("")
        if os.geteuid() == 0:
            self._internal, self._login, self._mail = "dovecot", "dovenull", "dovecot"
        else:  # a developer's own account runs everything
            self._internal = self._login = self._mail = pwd.getpwuid(os.geteuid()).pw_name

    def add_user(self, user: str, password: str) -> None:
        with self._passwd.open("a") as fh:
            fh.write(f"{user}:{{PLAIN}}{password}\n")

    def _namespace(self) -> str:
        if not self.special_use:
            return ""
        boxes = "".join(f'  mailbox "{name}" {{\n    special_use = {use}\n  }}\n'
                        for name, use in self.special_use.items())
        return f"namespace inbox {{\n  inbox = yes\n{boxes}}}\n"

    def _config(self) -> str:
        r = self.root
        return self._namespace() + f"""
protocols = imap
listen = 127.0.0.1
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {self._internal}
default_login_user = {self._login}
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self._passwd}
}}
userdb {{
  driver = static
  args = uid={self._mail} gid={self._mail} home={r}/mail/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""

    def start(self) -> None:
        mail = self.root / "mail"
        mail.mkdir(exist_ok=True)
        shutil.chown(mail, self._mail, self._mail)
        last = ""
        for _ in range(3):  # a free port can be taken between the probe and the bind
            self.port = _free_port()
            conf = self.root / "dovecot.conf"
            conf.write_text(self._config())
            self._proc = subprocess.Popen([str(DOVECOT), "-F", "-c", str(conf)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE)
            if self._wait_ready(10.0):
                return
            last = self._failure()
            self.stop(remove=False)
        self.stop()
        missing(f"private Dovecot did not start: {last}")

    def _wait_ready(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"* OK"):
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def _failure(self) -> str:
        text = ""
        if self._proc is not None and self._proc.poll() is not None and self._proc.stderr:
            text = self._proc.stderr.read().decode(errors="replace")
        log = self.root / "dovecot.log"
        if log.exists():
            text += log.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-3:]) or "no answer"

    def stop(self, *, remove: bool = True) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
