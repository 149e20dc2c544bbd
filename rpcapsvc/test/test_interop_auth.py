"""
End-to-end, password logins: ``twistd -n rpcapd --auth ...`` (no null
authentication) with libpcap 1.10.5's own client logging in with
C{--user}/C{--password}: the in-memory checker, a file of hashes made with
L{rpcapsvc.auth.hash_password}, and system accounts (a temporary user made
with C{useradd}, as root).  These tests skip, saying why, where the client is
not built, or for system accounts where the test cannot add a user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase

from ._e2e import Daemon, e2e_skip_reason, free_port, peer

SKIP = e2e_skip_reason(need_capture=False)

#: libpcap's server answers a failed login after 1 s; so does the daemon.
FAILED_LOGIN_DELAY = 1.0


def _system_user_skip_reason() -> Optional[str]:
    if SKIP:
        return SKIP
    if os.geteuid() != 0:
        return "adding a temporary system user (useradd) and reading /etc/shadow need root"
    for tool in ("useradd", "chpasswd", "usermod", "userdel"):
        if shutil.which(tool) is None:
            return f"no {tool} here to manage a temporary system user"
    return None


class PasswordDaemonTestCase(SynchronousTestCase):
    """A daemon with the given --auth options, and libpcap's client logging in to it."""

    daemon: Daemon

    def start_daemon(self, *auth_args: str) -> None:
        port = free_port()
        self.daemon = Daemon("--listen", f"tcp:{port}:interface=127.0.0.1", *auth_args, wait_port=port)
        self.addCleanup(self.daemon.stop)
        self.url = f"rpcap://127.0.0.1:{port}/"

    def findalldevs(
        self, user: Optional[str] = None, password: Optional[str] = None
    ) -> tuple[dict[str, Any], float]:
        """The client's one reply line and how long it took."""
        args = ["findalldevs", self.url]
        if user is not None:
            args += ["--user", user, "--password", password or ""]
        started = time.monotonic()
        [reply] = peer(*args)
        return reply, time.monotonic() - started

    def assert_logs_in(self, user: str, password: str) -> None:
        reply, _ = self.findalldevs(user, password)
        self.assertIn("interfaces", reply, f"login refused: {reply}\n{self.daemon.log()}")
        self.assertIn("lo", [i["name"].rsplit("/", 1)[1] for i in reply["interfaces"]])

    def assert_refused(self, user: Optional[str], password: Optional[str]) -> str:
        """The client's error, checked to be a late authentication failure."""
        reply, took = self.findalldevs(user, password)
        self.assertNotIn("interfaces", reply, f"logged in as {user!r} with {password!r}")
        error = str(reply["error"])
        self.assertIn("authentication failed", error.lower())
        # The daemon answers a failed login late, as libpcap's rpcapd does.
        self.assertGreaterEqual(took, FAILED_LOGIN_DELAY - 0.1)
        self.assertLess(took, FAILED_LOGIN_DELAY + 4)
        return error


class MemoryCheckerTests(PasswordDaemonTestCase):
    skip = SKIP

    def setUp(self) -> None:
        self.start_daemon("--auth", "memory:alice:right-pw")

    def test_right_password_lists_interfaces(self) -> None:
        self.assert_logs_in("alice", "right-pw")
        self.daemon.wait_for_log("logged in: user=alice")

    def test_wrong_password_is_refused_after_a_second(self) -> None:
        self.assert_refused("alice", "wrong-pw")
        self.assert_refused("mallory", "right-pw")
        self.assertTrue(self.daemon.alive())
        self.assert_logs_in("alice", "right-pw")

    def test_null_auth_is_refused(self) -> None:
        error = self.assert_refused(None, None)
        self.assertIn("NULL authentication not permitted", error)


class HashFileTests(PasswordDaemonTestCase):
    skip = SKIP

    def setUp(self) -> None:
        from rpcapsvc.auth import hash_password, method_supported

        fd, self.path = tempfile.mkstemp(prefix="rpcapd-passwd-")
        self.addCleanup(os.unlink, self.path)
        lines = [f"alice:{hash_password('alice pw')}", f"locked:!{hash_password('locked-pw')}"]
        self.yescrypt = method_supported("yescrypt")
        if self.yescrypt:
            lines.append(f"yves:{hash_password('yves-pw', 'yescrypt')}")
        os.write(fd, ("# test users\n" + "\n".join(lines) + "\n").encode())
        os.close(fd)
        self.start_daemon("--auth", f"hashfile:{self.path}")

    def test_right_password(self) -> None:
        self.assert_logs_in("alice", "alice pw")
        if self.yescrypt:
            self.assert_logs_in("yves", "yves-pw")

    def test_wrong_password_unknown_user_locked_user(self) -> None:
        self.assert_refused("alice", "alice-pw")
        self.assert_refused("bob", "alice pw")
        self.assert_refused("locked", "locked-pw")
        self.assert_refused(None, None)

    def test_changed_file_takes_effect_without_restart(self) -> None:
        from rpcapsvc.auth import hash_password, set_password

        set_password(self.path, "alice", hash_password("new pw"))
        self.assert_refused("alice", "alice pw")
        self.assert_logs_in("alice", "new pw")


class SystemAccountTests(PasswordDaemonTestCase):
    skip = _system_user_skip_reason()

    def setUp(self) -> None:
        self.user = f"rpcaptest-{secrets.token_hex(4)}"
        self.password = f"pw-{secrets.token_hex(8)}"
        subprocess.run(
            ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", self.user],
            check=True,
            capture_output=True,
        )
        self.addCleanup(subprocess.run, ["userdel", self.user], capture_output=True)
        subprocess.run(
            ["chpasswd"], input=f"{self.user}:{self.password}\n", text=True, check=True, capture_output=True
        )
        self.start_daemon("--auth", "unix")

    def test_right_password(self) -> None:
        self.assert_logs_in(self.user, self.password)
        self.daemon.wait_for_log(f"logged in: user={self.user}")

    def test_wrong_password_and_unknown_user(self) -> None:
        self.assert_refused(self.user, self.password + "x")
        self.assert_refused(f"rpcaptest-absent-{secrets.token_hex(4)}", self.password)

    def test_locked_account_is_refused(self) -> None:
        subprocess.run(["usermod", "--lock", self.user], check=True, capture_output=True)
        self.assert_refused(self.user, self.password)
