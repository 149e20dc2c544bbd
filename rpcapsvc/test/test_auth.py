"""
Tests for L{rpcapsvc.auth}: password hashing, the system-account and
hashed-file checkers (with fake account databases, crypt run in place),
C{rpcapd-passwd}, and the C{--auth} options that build the checkers.
No sockets, no threads.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import tempfile
from types import ModuleType, SimpleNamespace
from typing import Any, Callable, Optional, TypeVar

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, Logger, LogLevel, capturedLogs, formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from rpcapsvc import auth
from rpcapsvc.auth import (
    CryptUnavailable,
    HashedPasswordFileChecker,
    PasswordFileError,
    SystemAccountChecker,
    hash_password,
    is_locked,
    method_supported,
    read_password_file,
    verify_password,
)
from rpcapsvc.tap import Options

_T = TypeVar("_T")

SKIP_NO_CRYPT: Optional[str] = None
try:
    auth._crypt_backend()
except CryptUnavailable as e:
    SKIP_NO_CRYPT = str(e)


def in_place(f: Callable[[], _T]) -> Deferred[_T]:
    """Run the blocking check at once, in the test's thread."""
    return defer.maybeDeferred(f)


# Made once: sha512-crypt is quick, and the file tests need a few fixed hashes.
ALICE_HASH = "" if SKIP_NO_CRYPT else hash_password("alice-pw")
BOB_HASH = "" if SKIP_NO_CRYPT else hash_password("bob-pw")


@implementer(ILogObserver)
class EventList(list[dict[str, Any]]):
    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)


class CheckerTestMixin:
    def login(self, checker: Any, user: Any, password: Any) -> Any:
        """The avatar ID, or the failure's exception type."""
        results: list[Any] = []
        checker.requestAvatarId(UsernamePassword(user, password)).addCallbacks(
            results.append, lambda f: results.append(f.type)
        )
        assert len(results) == 1, "the check did not finish in place"
        return results[0]


class HashPasswordTests(SynchronousTestCase):
    skip = SKIP_NO_CRYPT

    def test_sha512_round_trip(self) -> None:
        hashed = hash_password("correct horse")
        self.assertTrue(hashed.startswith("$6$"))
        salt = hashed.split("$")[2]
        self.assertEqual(len(salt), 16)
        self.assertTrue(verify_password("correct horse", hashed))
        self.assertTrue(verify_password(b"correct horse", hashed))
        self.assertFalse(verify_password("correct horsf", hashed))
        self.assertFalse(verify_password("correct hors", hashed))

    def test_fresh_salt_each_time(self) -> None:
        self.assertNotEqual(hash_password("same"), hash_password("same"))

    def test_yescrypt_round_trip(self) -> None:
        if not method_supported("yescrypt"):
            raise self.skipTest("this libcrypt cannot make yescrypt hashes")
        hashed = hash_password("pässword", "yescrypt")
        self.assertTrue(hashed.startswith("$y$"))
        self.assertTrue(verify_password("pässword", hashed))
        self.assertFalse(verify_password("password", hashed))

    def test_other_methods_when_supported(self) -> None:
        tried = 0
        for method in ("sha256", "bcrypt"):
            if method_supported(method):
                tried += 1
                hashed = hash_password("pw", method)
                self.assertTrue(hashed.startswith(auth.METHODS[method]))
                self.assertTrue(verify_password("pw", hashed))
                self.assertFalse(verify_password("pW", hashed))
        self.assertTrue(method_supported("sha512"))

    def test_own_sha512_salt_without_gensalt(self) -> None:
        """Without crypt_gensalt (glibc's libcrypt, the crypt module) sha512 still works."""
        backend = auth._crypt_backend()
        self.patch(backend, "gensalt", lambda prefix, count: None)
        hashed = hash_password("pw")
        self.assertRegex(hashed, r"^\$6\$[./0-9A-Za-z]{16}\$")
        self.assertTrue(verify_password("pw", hashed))
        self.assertRaises(ValueError, hash_password, "pw", "yescrypt")

    def test_refuses_what_crypt_cannot_take(self) -> None:
        self.assertRaises(ValueError, hash_password, "")
        self.assertRaises(ValueError, hash_password, "a\0b")
        self.assertRaises(ValueError, hash_password, "x" * 512)
        self.assertRaises(ValueError, hash_password, "pw", "md5")

    def test_nul_cannot_cut_a_password_short(self) -> None:
        hashed = hash_password("secret")
        self.assertFalse(verify_password(b"secret\0anything", hashed))

    def test_locked_and_empty_hashes_never_match(self) -> None:
        hashed = hash_password("pw")
        for stored in ("!" + hashed, "*" + hashed, "!", "*", "!!", ""):
            self.assertTrue(is_locked(stored))
            self.assertFalse(verify_password("pw", stored), stored)
            self.assertFalse(verify_password("", stored), stored)
        self.assertFalse(is_locked(hashed))

    def test_garbage_hash_is_a_mismatch_not_an_error(self) -> None:
        for stored in ("plain-text", "$apr1$abc$def", "{SHA}abc", "$6$", "päss"):
            self.assertFalse(verify_password("pw", stored))

    def test_crypt_module_fallback_verifies_libcrypt_hashes(self) -> None:
        try:
            module = auth._load_backend(find_library=lambda name: None)
        except CryptUnavailable:
            raise self.skipTest("this Python has no crypt module") from None
        self.assertIsInstance(module, auth._CryptModule)
        self.patch(auth, "_backend", module)
        self.assertTrue(verify_password("alice-pw", ALICE_HASH))
        self.assertFalse(verify_password("bob-pw", ALICE_HASH))
        self.assertTrue(verify_password("pw", hash_password("pw")))


class NoCryptTests(SynchronousTestCase):
    def no_crypt(self) -> None:
        def no_module(name: str) -> ModuleType:
            raise ImportError(name)

        real_load = auth._load_backend

        def load() -> Any:
            return real_load(find_library=lambda name: None, import_module=no_module)

        self.patch(auth, "_backend", None)
        self.patch(auth, "_load_backend", load)

    def test_checker_creation_says_why(self) -> None:
        self.no_crypt()
        with self.assertRaises(CryptUnavailable) as caught:
            SystemAccountChecker(run_blocking=in_place)
        self.assertIn("libcrypt", str(caught.exception))
        self.assertIn("crypt module", str(caught.exception))
        self.assertRaises(CryptUnavailable, HashedPasswordFileChecker, "/nonexistent", run_blocking=in_place)
        self.assertRaises(CryptUnavailable, hash_password, "pw")

    def test_auth_unix_option_says_why(self) -> None:
        self.no_crypt()
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["--auth", "unix"])
        self.assertIn("--auth unix", str(caught.exception))
        self.assertIn("libcrypt", str(caught.exception))


class FakeShadowSystem:
    """A passwd database and a shadow file, for L{SystemAccountChecker}."""

    def __init__(self, test: SynchronousTestCase, passwd: dict[str, str], shadow: str) -> None:
        self.passwd = passwd
        self.lookups: list[str] = []
        fd, self.shadow_path = tempfile.mkstemp(prefix="shadow-")
        os.write(fd, shadow.encode())
        os.close(fd)
        test.addCleanup(os.unlink, self.shadow_path)

    def getpwnam(self, name: str) -> Any:
        self.lookups.append(name)
        if name not in self.passwd:
            raise KeyError(name)
        return SimpleNamespace(pw_name=name, pw_passwd=self.passwd[name])

    def checker(self, today: int = 20000) -> SystemAccountChecker:
        return SystemAccountChecker(
            run_blocking=in_place,
            shadow_path=self.shadow_path,
            getpwnam=self.getpwnam,
            today=lambda: today,
        )


class SystemAccountCheckerTests(CheckerTestMixin, SynchronousTestCase):
    skip = SKIP_NO_CRYPT

    def setUp(self) -> None:
        self.system = FakeShadowSystem(
            self,
            passwd={
                "alice": "x",
                "bob": BOB_HASH,  # no shadow: the hash is in passwd
                "locked": "x",
                "starred": "x",
                "nopass": "x",
                "expired": "x",
                "ghost": "x",  # in passwd, not in shadow
                "daemon": "*",
                "lockedpw": "!" + BOB_HASH,
            },
            shadow=(
                f"root:!:19000:0:99999:7:::\n"
                f"alice:{ALICE_HASH}:19000:0:99999:7:::\n"
                f"locked:!{ALICE_HASH}:19000:0:99999:7:::\n"
                f"starred:*:19000:0:99999:7:::\n"
                f"nopass::19000:0:99999:7:::\n"
                f"expired:{ALICE_HASH}:19000:0:99999:7::19999:\n"
                f"daemon:{ALICE_HASH}:19000:0:99999:7:::\n"
            ),
        )
        self.checker = self.system.checker()

    def test_provides_the_interface(self) -> None:
        self.assertTrue(ICredentialsChecker.providedBy(self.checker))

    def test_shadowed_password(self) -> None:
        self.assertEqual(self.login(self.checker, b"alice", b"alice-pw"), b"alice")

    def test_password_in_passwd(self) -> None:
        self.assertEqual(self.login(self.checker, b"bob", b"bob-pw"), b"bob")

    def test_star_in_passwd_reads_shadow(self) -> None:
        self.assertEqual(self.login(self.checker, b"daemon", b"alice-pw"), b"daemon")

    def test_text_credentials(self) -> None:
        self.assertEqual(self.login(self.checker, "alice", "alice-pw"), b"alice")

    def test_wrong_password(self) -> None:
        self.assertIs(self.login(self.checker, b"alice", b"bob-pw"), UnauthorizedLogin)
        self.assertIs(self.login(self.checker, b"alice", b""), UnauthorizedLogin)

    def test_refusal_said_once_by_the_session(self) -> None:
        """
        A refused login is one log line, the session's: its id, the client's
        address and port, the user and why.  The client is not told why.
        """
        from twisted.internet.testing import MemoryReactorClock

        from rpcapsvc.protocol.wire import AuthRequest, AuthType, ErrorReply
        from rpcapsvc.server.control import RpcapServerFactory
        from rpcapsvc.server.session import SessionPolicy
        from rpcapsvc.testing import FakeCaptureSystem

        from ._fixtures import Client

        reactor = MemoryReactorClock()
        factory = RpcapServerFactory(reactor, FakeCaptureSystem([]), SessionPolicy(checkers=[self.checker]))
        with capturedLogs() as events:
            client = Client(factory, "192.0.2.10")
            client.send(AuthRequest(AuthType.PASSWORD, b"alice", b"bob-pw"))
            reactor.advance(1)
        lines = [formatEvent(e) for e in events if "login" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(
            lines[0],
            r"^session=\d+ peer=192\.0\.2\.10:5555 login failed: authentication failed "
            r"\(user alice: wrong password\)$",
        )
        [reply] = client.replies()
        assert isinstance(reply, ErrorReply)
        self.assertNotIn("wrong password", reply.text)

    def test_unknown_user(self) -> None:
        self.assertIs(self.login(self.checker, b"mallory", b"alice-pw"), UnauthorizedLogin)
        self.assertIs(self.login(self.checker, b"ghost", b"alice-pw"), UnauthorizedLogin)

    def test_locked_accounts_never_log_in(self) -> None:
        for user in (b"locked", b"starred", b"nopass", b"root", b"lockedpw"):
            self.assertIs(self.login(self.checker, user, b"alice-pw"), UnauthorizedLogin, user)
            self.assertIs(self.login(self.checker, user, b"bob-pw"), UnauthorizedLogin, user)
            self.assertIs(self.login(self.checker, user, b""), UnauthorizedLogin, user)

    def test_expired_account(self) -> None:
        self.assertIs(self.login(self.checker, b"expired", b"alice-pw"), UnauthorizedLogin)
        before_expiry = self.system.checker(today=19998)
        self.assertEqual(self.login(before_expiry, b"expired", b"alice-pw"), b"expired")

    def test_unusable_names_and_passwords(self) -> None:
        lookups = len(self.system.lookups)
        for user, password in [
            (b"\xffalice", b"alice-pw"),
            (b"alice:x", b"alice-pw"),
            (b"", b"alice-pw"),
            (b"alice", b"alice-pw\0junk"),
            (b"alice", b"x" * 600),
        ]:
            self.assertIs(self.login(self.checker, user, password), UnauthorizedLogin, (user, password))
        self.assertEqual(len(self.system.lookups), lookups)

    def test_unreadable_shadow_is_a_refusal(self) -> None:
        """A shadow file the daemon cannot read refuses the login and logs why."""
        checker = SystemAccountChecker(
            run_blocking=in_place, shadow_path="/nonexistent/shadow", getpwnam=self.system.getpwnam
        )
        events: list[dict[str, Any]] = []
        self.patch(checker, "log", Logger(observer=events.append))
        self.assertIs(self.login(checker, b"alice", b"alice-pw"), UnauthorizedLogin)
        [line] = [formatEvent(e) for e in events]
        self.assertIn("Password login for alice refused: cannot read the account database", line)
        self.assertIn("/nonexistent/shadow", line)
        self.assertNotIn("log_failure", events[0])

    def test_checks_in_the_reactors_thread_pool(self) -> None:
        """By default the hash is computed in the reactor's thread pool, not in the reactor thread."""
        calls: list[str] = []

        class FakePool:
            def callInThreadWithCallback(self, on_result: Any, f: Any, *a: Any, **kw: Any) -> None:
                calls.append("pool")
                on_result(True, f(*a, **kw))

        class FakeReactor:
            def getThreadPool(self) -> FakePool:
                return FakePool()

            def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
                f(*a, **kw)

        checker = SystemAccountChecker(
            FakeReactor(), shadow_path=self.system.shadow_path, getpwnam=self.system.getpwnam
        )
        self.assertEqual(self.login(checker, b"alice", b"alice-pw"), b"alice")
        self.assertIs(self.login(checker, b"alice", b"nope"), UnauthorizedLogin)
        self.assertEqual(calls, ["pool", "pool"])


class HashedPasswordFileCheckerTests(CheckerTestMixin, SynchronousTestCase):
    skip = SKIP_NO_CRYPT

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rpcapd-auth-")
        self.addCleanup(self._rmtree)
        self.path = os.path.join(self.dir, "passwd")

    def _rmtree(self) -> None:
        import shutil

        shutil.rmtree(self.dir)

    def write(self, text: str) -> None:
        # A rewrite within the same clock tick must still count as a change.
        old = os.stat(self.path).st_mtime_ns if os.path.exists(self.path) else 0
        with open(self.path, "w") as f:
            f.write(text)
        os.utime(self.path, ns=(old + 10**9, old + 10**9))

    def checker(self) -> HashedPasswordFileChecker:
        return HashedPasswordFileChecker(self.path, run_blocking=in_place)

    def test_load(self) -> None:
        self.write(f"# rpcapd users\n\nalice:{ALICE_HASH}\n  \n  # indented comment\nbob:{BOB_HASH}\n")
        checker = self.checker()
        self.assertTrue(ICredentialsChecker.providedBy(checker))
        self.assertEqual(self.login(checker, b"alice", b"alice-pw"), b"alice")
        self.assertEqual(self.login(checker, b"bob", b"bob-pw"), b"bob")
        self.assertIs(self.login(checker, b"alice", b"bob-pw"), UnauthorizedLogin)
        self.assertIs(self.login(checker, b"carol", b"bob-pw"), UnauthorizedLogin)
        self.assertEqual(read_password_file(self.path), {"alice": ALICE_HASH, "bob": BOB_HASH})

    def test_locked_line(self) -> None:
        self.write(f"alice:!{ALICE_HASH}\nbob:*\n")
        checker = self.checker()
        self.assertIs(self.login(checker, b"alice", b"alice-pw"), UnauthorizedLogin)
        self.assertIs(self.login(checker, b"bob", b"*"), UnauthorizedLogin)

    def test_reloads_when_the_file_changes(self) -> None:
        self.write(f"alice:{ALICE_HASH}\n")
        checker = self.checker()
        self.assertEqual(self.login(checker, b"alice", b"alice-pw"), b"alice")
        self.write(f"alice:{BOB_HASH}\ncarol:{ALICE_HASH}\n")
        self.assertIs(self.login(checker, b"alice", b"alice-pw"), UnauthorizedLogin)
        self.assertEqual(self.login(checker, b"alice", b"bob-pw"), b"alice")
        self.assertEqual(self.login(checker, b"carol", b"alice-pw"), b"carol")

    def test_reloads_a_replaced_file(self) -> None:
        """rpcapd-passwd replaces the file (a new inode): that is a change too."""
        self.write(f"alice:{ALICE_HASH}\n")
        checker = self.checker()
        auth.set_password(self.path, "alice", BOB_HASH)
        self.assertEqual(self.login(checker, b"alice", b"bob-pw"), b"alice")

    def test_malformed_line_at_load_names_it(self) -> None:
        for bad in ("alice", "alice:", ":hash", f"alice:{ALICE_HASH}:extra", f"al ice:{ALICE_HASH}"):
            self.write(f"# users\nbob:{BOB_HASH}\n{bad}\n")
            with self.assertRaises(PasswordFileError) as caught:
                self.checker()
            self.assertIn(f"{self.path}:3:", str(caught.exception))
            self.assertIn("malformed", str(caught.exception))

    def test_repeated_user_names_the_line(self) -> None:
        self.write(f"alice:{ALICE_HASH}\nalice:{BOB_HASH}\n")
        with self.assertRaises(PasswordFileError) as caught:
            self.checker()
        self.assertIn(f"{self.path}:2:", str(caught.exception))

    def test_plain_text_password_is_not_a_hash(self) -> None:
        self.write("alice:secret\n")
        with self.assertRaises(PasswordFileError) as caught:
            self.checker()
        self.assertIn(f"{self.path}:1:", str(caught.exception))
        self.assertIn("rpcapd-passwd", str(caught.exception))

    def test_missing_file(self) -> None:
        with self.assertRaises(PasswordFileError) as caught:
            self.checker()
        self.assertIn(self.path, str(caught.exception))

    def capture_log(self, checker: HashedPasswordFileChecker) -> list[dict[str, Any]]:
        """The events C{checker} logs from now on."""
        events = EventList()
        self.patch(checker, "log", Logger(observer=events))
        return events

    def test_broken_after_a_change_refuses_everyone_until_fixed(self) -> None:
        self.write(f"alice:{ALICE_HASH}\n")
        checker = self.checker()
        events = self.capture_log(checker)
        self.write(f"alice:{ALICE_HASH}\noops\n")
        self.assertIs(self.login(checker, b"alice", b"alice-pw"), UnauthorizedLogin)
        self.assertIs(self.login(checker, b"alice", b"alice-pw"), UnauthorizedLogin)
        errors = [formatEvent(e) for e in events if e["log_level"] is LogLevel.error]
        self.assertEqual(len(errors), 2)
        self.assertIn(f"{self.path}:2: malformed line", errors[0])
        self.write(f"alice:{ALICE_HASH}\n")
        self.assertEqual(self.login(checker, b"alice", b"alice-pw"), b"alice")

    def test_deleted_file_refuses_everyone(self) -> None:
        self.write(f"alice:{ALICE_HASH}\n")
        checker = self.checker()
        events = self.capture_log(checker)
        os.unlink(self.path)
        self.assertIs(self.login(checker, b"alice", b"alice-pw"), UnauthorizedLogin)
        self.assertIn("cannot read password file", formatEvent(events[-1]))
        self.write(f"alice:{ALICE_HASH}\n")
        self.assertEqual(self.login(checker, b"alice", b"alice-pw"), b"alice")


class PasswdCommandTests(SynchronousTestCase):
    skip = SKIP_NO_CRYPT

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rpcapd-passwd-")
        self.addCleanup(self._rmtree)
        self.path = os.path.join(self.dir, "rpcapd.passwd")
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def _rmtree(self) -> None:
        import shutil

        shutil.rmtree(self.dir)

    def run_main(self, *argv: str, stdin: str = "") -> int:
        self.patch(sys, "stdin", io.StringIO(stdin))
        return auth.main(list(argv))

    def test_stdin_creates_a_private_file(self) -> None:
        self.assertEqual(self.run_main("--stdin", self.path, "alice", stdin="s3cret pw\n"), 0)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        users = read_password_file(self.path)
        self.assertEqual(list(users), ["alice"])
        self.assertTrue(users["alice"].startswith("$6$"))
        self.assertTrue(verify_password("s3cret pw", users["alice"]))
        self.assertIn("Added alice", self.stderr.getvalue())
        self.assertEqual(os.listdir(self.dir), ["rpcapd.passwd"])  # no temporary file left

    def test_replaces_an_existing_users_line(self) -> None:
        with open(self.path, "w") as f:
            f.write(f"# operators\nalice:{ALICE_HASH}\n\nbob:{BOB_HASH}\n")
        os.chmod(self.path, 0o644)
        self.assertEqual(self.run_main("--stdin", self.path, "alice", stdin="new-pw\r\n"), 0)
        with open(self.path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "# operators")
        self.assertEqual(lines[2:], ["", f"bob:{BOB_HASH}"])
        self.assertTrue(lines[1].startswith("alice:$6$"))
        self.assertTrue(verify_password("new-pw", lines[1].split(":", 1)[1]))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertIn("Changed the password of alice", self.stderr.getvalue())

    def test_method(self) -> None:
        if not method_supported("yescrypt"):
            raise self.skipTest("this libcrypt cannot make yescrypt hashes")
        self.assertEqual(self.run_main("--stdin", "--method", "yescrypt", self.path, "al", stdin="pw\n"), 0)
        self.assertTrue(read_password_file(self.path)["al"].startswith("$y$"))

    def test_asks_twice(self) -> None:
        answers = iter(["typed-pw", "typed-pw"])
        prompts: list[str] = []

        def fake_getpass(prompt: str = "") -> str:
            prompts.append(prompt)
            return next(answers)

        self.patch(auth.getpass, "getpass", fake_getpass)
        self.assertEqual(self.run_main(self.path, "alice"), 0)
        self.assertEqual(len(prompts), 2)
        self.assertTrue(verify_password("typed-pw", read_password_file(self.path)["alice"]))

    def test_different_answers_change_nothing(self) -> None:
        answers = iter(["one", "two"])
        self.patch(auth.getpass, "getpass", lambda prompt="": next(answers))
        self.assertEqual(self.run_main(self.path, "alice"), 1)
        self.assertIn("differ", self.stderr.getvalue())
        self.assertFalse(os.path.exists(self.path))

    def test_refusals(self) -> None:
        self.assertEqual(self.run_main("--stdin", self.path, "alice", stdin=""), 1)
        self.assertIn("empty password", self.stderr.getvalue())
        for user in ("a:b", "a b", "#alice", ""):
            self.assertEqual(self.run_main("--stdin", self.path, user, stdin="pw\n"), 1, user)
        self.assertFalse(os.path.exists(self.path))
        with open(self.path, "w") as f:
            f.write("garbage line\n")
        self.assertEqual(self.run_main("--stdin", self.path, "alice", stdin="pw\n"), 1)
        self.assertIn(f"{self.path}:1:", self.stderr.getvalue())
        with open(self.path) as f:
            self.assertEqual(f.read(), "garbage line\n")


class AuthOptionTests(CheckerTestMixin, SynchronousTestCase):
    """C{twistd rpcapd --auth ...}."""

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_unix_is_our_system_account_checker(self) -> None:
        if SKIP_NO_CRYPT:
            raise self.skipTest(SKIP_NO_CRYPT)
        [checker] = self.parse("--auth", "unix")["credCheckers"]
        self.assertIsInstance(checker, SystemAccountChecker)

    def test_unix_takes_no_argument(self) -> None:
        self.assertRaises(UsageError, self.parse, "--auth", "unix:/etc/shadow")

    def test_hashfile_plugin(self) -> None:
        if SKIP_NO_CRYPT:
            raise self.skipTest(SKIP_NO_CRYPT)
        fd, path = tempfile.mkstemp()
        os.write(fd, f"alice:{ALICE_HASH}\n".encode())
        os.close(fd)
        self.addCleanup(os.unlink, path)
        [checker] = self.parse("--auth", f"hashfile:{path}")["credCheckers"]
        self.assertIsInstance(checker, HashedPasswordFileChecker)
        self.assertEqual(checker.path, path)

    def test_hashfile_errors_name_the_file(self) -> None:
        with self.assertRaises(UsageError) as caught:
            self.parse("--auth", "hashfile:/nonexistent/rpcapd.passwd")
        self.assertIn("/nonexistent/rpcapd.passwd", str(caught.exception))
        self.assertRaises(UsageError, self.parse, "--auth", "hashfile:")

    def test_memory_checker_takes_what_clients_send(self) -> None:
        """RPCAP user names and passwords arrive as bytes; --auth memory must match them."""
        [checker] = self.parse("--auth", "memory:alice:secret:bob:pw")["credCheckers"]
        self.assertEqual(self.login(checker, b"alice", b"secret"), b"alice")
        self.assertEqual(self.login(checker, b"bob", b"pw"), b"bob")
        self.assertIs(self.login(checker, b"alice", b"pw"), UnauthorizedLogin)
        self.assertRaises(UsageError, self.parse, "--auth", "memory:alice")

    def test_other_types_go_to_twisted(self) -> None:
        fd, path = tempfile.mkstemp()
        os.write(fd, b"alice:secret\n")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        [checker] = self.parse("--auth", f"file:{path}")["credCheckers"]
        self.assertEqual(self.login(checker, b"alice", b"secret"), b"alice")
        with self.assertRaises(UsageError) as caught:
            self.parse("--auth", "no-such-type")
        self.assertIn("not recognized", str(caught.exception))

    def test_several_checkers(self) -> None:
        if SKIP_NO_CRYPT:
            raise self.skipTest(SKIP_NO_CRYPT)
        options = self.parse("--auth", "memory:a:b", "--auth", "unix")
        self.assertEqual(len(options["credCheckers"]), 2)

    def test_help(self) -> None:
        self.assertIn("hashfile:PATH", " ".join(str(Options()).split()))
        options = Options()
        options.authOutput = io.StringIO()
        self.assertRaises(SystemExit, options.parseOptions, ["--help-auth"])
        self.assertIn("hashfile", options.authOutput.getvalue())
        options = Options()
        options.authOutput = io.StringIO()
        self.assertRaises(SystemExit, options.parseOptions, ["--help-auth-type", "hashfile"])
        self.assertIn("rpcapd-passwd", options.authOutput.getvalue())
