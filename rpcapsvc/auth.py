"""
Password checkers for C{twistd rpcapd}: system accounts, as libpcap's
C{rpcapd} logs users in (C{--auth unix}), and a file of crypt-style password
hashes (C{--auth hashfile:PATH}) written by the C{rpcapd-passwd} command.

Hashes are computed by the system's libcrypt (libxcrypt on current Linux
distributions: yescrypt, sha512-crypt, sha256-crypt, bcrypt), called through
C{ctypes}, so this works on Pythons without the C{crypt} module (removed in
3.13); the C{crypt} module is the fallback.  Hashing is slow on purpose, so
checkers run it in the reactor's thread pool.

    rpcapd-passwd /etc/rpcapd.passwd alice            # asks for the password twice
    twistd rpcapd --auth hashfile:/etc/rpcapd.passwd
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import getpass
import hmac
import importlib
import os
import secrets
import sys
import tempfile
import threading
import time
from types import ModuleType
from typing import Any, Callable, Optional, Protocol, TypeVar, Union

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "METHODS",
    "CryptUnavailable",
    "HashedPasswordFileChecker",
    "PasswordFileError",
    "SystemAccountChecker",
    "hash_password",
    "is_locked",
    "main",
    "method_supported",
    "read_password_file",
    "set_password",
    "verify_password",
]

_T = TypeVar("_T")

#: Hash methods L{hash_password} knows, by name: their crypt prefix.
METHODS = {"yescrypt": "$y$", "sha512": "$6$", "sha256": "$5$", "bcrypt": "$2b$"}
# libxcrypt picks bcrypt's cost 5 when asked for its default: too cheap today.
_GENSALT_COUNT = {"bcrypt": 12}
_SALT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: libxcrypt refuses longer passphrases (its limit is 512 bytes with the NUL);
#: refusing them everywhere also bounds the work one login attempt can cause.
MAX_PASSWORD_BYTES = 511

# Larger than any libc's struct crypt_data (libxcrypt: 32 KiB, glibc's old libcrypt: 128 KiB).
_CRYPT_DATA_SIZE = 1 << 18

# libxcrypt's crypt_checksalt() results.
_CRYPT_SALT_OK = 0
_CRYPT_SALT_TOO_CHEAP = 4


class CryptUnavailable(RuntimeError):
    """Neither libcrypt nor Python's C{crypt} module is there to check password hashes."""


class PasswordFileError(ValueError):
    """A password file could not be read or has a malformed line (the message names it)."""


# --- crypt backends -------------------------------------------------------------


class _Crypt(Protocol):
    name: str

    def crypt(self, phrase: bytes, setting: bytes) -> Optional[bytes]:
        """The hash of C{phrase} under C{setting}, or C{None} if crypt refused."""

    def gensalt(self, prefix: bytes, count: int) -> Optional[bytes]:
        """A fresh random setting for C{prefix}, or C{None} if this crypt cannot make one."""

    def setting_acceptable(self, setting: bytes) -> bool:
        """Whether C{setting} names a method this crypt supports and recommends."""


def _result(hashed: Optional[bytes]) -> Optional[bytes]:
    # libxcrypt answers a failure with a "*0"/"*1" token rather than NULL.
    if not hashed or hashed.startswith(b"*"):
        return None
    return hashed


class _LibCrypt:
    """The system's libcrypt through ctypes (ctypes drops the GIL during the call)."""

    def __init__(self, path: str) -> None:
        self.name = path
        lib = ctypes.CDLL(path)
        self._lock = threading.Lock()
        self._crypt_r = getattr(lib, "crypt_r", None)
        if self._crypt_r is not None:
            self._crypt_r.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
            self._crypt_r.restype = ctypes.c_char_p
        self._crypt = lib.crypt
        self._crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        self._crypt.restype = ctypes.c_char_p
        self._gensalt_rn = getattr(lib, "crypt_gensalt_rn", None)
        if self._gensalt_rn is not None:
            self._gensalt_rn.argtypes = [
                ctypes.c_char_p,
                ctypes.c_ulong,
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
            ]
            self._gensalt_rn.restype = ctypes.c_char_p
        self._gensalt = getattr(lib, "crypt_gensalt", None)
        if self._gensalt is not None:
            self._gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
            self._gensalt.restype = ctypes.c_char_p
        self._checksalt = getattr(lib, "crypt_checksalt", None)
        if self._checksalt is not None:
            self._checksalt.argtypes = [ctypes.c_char_p]
            self._checksalt.restype = ctypes.c_int

    def crypt(self, phrase: bytes, setting: bytes) -> Optional[bytes]:
        if self._crypt_r is not None:
            data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)  # zeroed, as crypt_r requires
            return _result(self._crypt_r(phrase, setting, data))
        with self._lock:  # crypt() returns a static buffer
            return _result(self._crypt(phrase, setting))

    def gensalt(self, prefix: bytes, count: int) -> Optional[bytes]:
        rbytes = os.urandom(32)
        if self._gensalt_rn is not None:
            out = ctypes.create_string_buffer(256)
            return _result(self._gensalt_rn(prefix, count, rbytes, len(rbytes), out, len(out)))
        if self._gensalt is not None:
            with self._lock:
                return _result(self._gensalt(prefix, count, rbytes, len(rbytes)))
        return None

    def setting_acceptable(self, setting: bytes) -> bool:
        if self._checksalt is None:
            return setting.startswith(b"$")
        return self._checksalt(setting) in (_CRYPT_SALT_OK, _CRYPT_SALT_TOO_CHEAP)


class _CryptModule:
    """Python's own C{crypt} module (gone in 3.13): text in, text out."""

    def __init__(self, module: ModuleType) -> None:
        self.name = "Python's crypt module"
        self._module = module

    def crypt(self, phrase: bytes, setting: bytes) -> Optional[bytes]:
        try:
            hashed = self._module.crypt(phrase.decode("utf-8"), setting.decode("ascii"))
        except (UnicodeError, OSError, ValueError):
            return None
        return _result(hashed.encode("ascii") if hashed else None)

    def gensalt(self, prefix: bytes, count: int) -> Optional[bytes]:
        return None

    def setting_acceptable(self, setting: bytes) -> bool:
        return setting.startswith(b"$")


def _load_backend(
    find_library: Callable[[str], Optional[str]] = ctypes.util.find_library,
    import_module: Callable[[str], ModuleType] = importlib.import_module,
) -> _Crypt:
    path = find_library("crypt")
    if path:
        try:
            return _LibCrypt(path)
        except (OSError, AttributeError):
            pass
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _CryptModule(import_module("crypt"))
    except ImportError:
        pass
    raise CryptUnavailable(
        "cannot check password hashes: no libcrypt found (install libcrypt1 / libxcrypt) "
        "and this Python has no crypt module (removed in Python 3.13)"
    )


_backend_lock = threading.Lock()
_backend: Optional[_Crypt] = None


def _crypt_backend() -> _Crypt:
    """The crypt implementation, found once; raises L{CryptUnavailable}."""
    global _backend
    with _backend_lock:
        if _backend is None:
            _backend = _load_backend()
        return _backend


# --- hashing and verifying ----------------------------------------------------


def is_locked(hashed: str) -> bool:
    """Whether a stored hash can never match: empty, or locked with C{!} or C{*}."""
    return not hashed or hashed.startswith(("!", "*"))


def _phrase(password: Union[str, bytes]) -> Optional[bytes]:
    phrase = password.encode("utf-8") if isinstance(password, str) else password
    # crypt sees a C string: a NUL would silently cut the password short.
    if not phrase or b"\0" in phrase or len(phrase) > MAX_PASSWORD_BYTES:
        return None
    return phrase


def _verify(backend: _Crypt, password: Union[str, bytes], hashed: str) -> bool:
    phrase = _phrase(password)
    if phrase is None or is_locked(hashed):
        return False
    try:
        setting = hashed.encode("ascii")
    except UnicodeError:
        return False
    result = backend.crypt(phrase, setting)
    return result is not None and hmac.compare_digest(result, setting)


def verify_password(password: Union[str, bytes], hashed: str) -> bool:
    """
    Whether C{password} matches the crypt-style C{hashed}.  Locked and empty
    hashes, empty passwords and passwords libcrypt cannot take (a NUL byte,
    more than L{MAX_PASSWORD_BYTES}) never match.  Blocks for as long as the
    hash method takes.
    """
    return _verify(_crypt_backend(), password, hashed)


def _salt(backend: _Crypt, method: str) -> bytes:
    if method not in METHODS:
        raise ValueError(f"unknown hash method {method!r}; choose one of {', '.join(METHODS)}")
    prefix = METHODS[method]
    salt = backend.gensalt(prefix.encode("ascii"), _GENSALT_COUNT.get(method, 0))
    if salt is not None:
        return salt
    if method in ("sha512", "sha256"):
        return (prefix + "".join(secrets.choice(_SALT_ALPHABET) for _ in range(16))).encode("ascii")
    raise ValueError(f"{backend.name} cannot make {method} hashes here")


def hash_password(password: str, method: str = "sha512") -> str:
    """
    A crypt-style hash of C{password} with a fresh random salt: C{method} is
    one of L{METHODS} (C{"yescrypt"} needs libxcrypt).  Raises C{ValueError}
    for an empty password, one libcrypt cannot take, or a method this system
    cannot hash with; L{CryptUnavailable} without any crypt.
    """
    backend = _crypt_backend()
    phrase = _phrase(password)
    if phrase is None:
        raise ValueError(
            f"a password must be 1 to {MAX_PASSWORD_BYTES} bytes of UTF-8 without NUL characters"
        )
    hashed = backend.crypt(phrase, _salt(backend, method))
    if hashed is None or not hashed.startswith(METHODS[method].encode("ascii")):
        raise ValueError(f"{backend.name} cannot make {method} hashes here")
    return hashed.decode("ascii")


def method_supported(method: str) -> bool:
    """Whether L{hash_password} can hash with C{method} here."""
    try:
        hash_password("probe", method)
    except (ValueError, CryptUnavailable):
        return False
    return True


# --- running blocking work ------------------------------------------------------


class BlockingRunner(Protocol):
    """Runs a blocking call somewhere, its result in a Deferred."""

    def __call__(self, f: Callable[[], _T]) -> Deferred[_T]: ...


def _reactor_thread_pool(reactor: Any) -> BlockingRunner:
    def run(f: Callable[[], _T]) -> Deferred[_T]:
        r = reactor
        if r is None:
            from twisted.internet import reactor as r
        return threads.deferToThreadPool(r, r.getThreadPool(), f)

    return run


def _credentials(credentials: IUsernamePassword) -> Optional[tuple[bytes, str, bytes]]:
    """(username as bytes, username as text, password), or C{None} if unusable."""
    username = credentials.username
    raw = username.encode("utf-8") if isinstance(username, str) else bytes(username)
    try:
        name = raw.decode("utf-8")
    except UnicodeError:
        return None
    password = _phrase(credentials.password)
    if not name or password is None or any(c in name for c in ":\n\r\0"):
        return None
    return raw, name, password


class _PasswordChecker:
    """Shared by both checkers: decode credentials, check in a thread, log, refuse uniformly."""

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(self, reactor: Any, run_blocking: Optional[BlockingRunner]) -> None:
        self._backend = _crypt_backend()
        self._run: BlockingRunner = run_blocking or _reactor_thread_pool(reactor)
        self._dummy_hash: Optional[str] = None

    def _burn_time(self, password: bytes) -> None:
        # An unknown user costs as much as a wrong password, so timing does not tell them apart.
        if self._dummy_hash is None:
            self._dummy_hash = hash_password(secrets.token_hex(16), self._dummy_method())
        _verify(self._backend, password, self._dummy_hash)

    def _dummy_method(self) -> str:
        return "sha512"

    def _check(self, name: str, password: bytes) -> Optional[str]:
        """In a thread: C{None} if C{password} is right for C{name}, else why not."""
        raise NotImplementedError

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[Union[bytes, tuple[()]]]:
        # Refusals are not logged here: the session says them, once, with its id and peer.
        parts = _credentials(credentials)
        if parts is None:
            return defer.fail(UnauthorizedLogin("unusable user name or password"))
        raw, name, password = parts
        d = self._run(lambda: self._check(name, password))

        def checked(why: Optional[str]) -> Union[bytes, tuple[()]]:
            if why is not None:
                raise UnauthorizedLogin(f"user {name}: {why}")
            return raw

        def failed(failure: Failure) -> Failure:
            if failure.check(UnauthorizedLogin):
                return failure
            if failure.check(PasswordFileError):
                self.log.error(
                    "Password login for {user} refused: {error}; no one logs in until it is fixed",
                    user=name,
                    error=failure.getErrorMessage(),
                )
            elif failure.check(OSError):
                # The operator's to fix (a shadow file we may not read), not a bug: one line.
                self.log.error(
                    "Password login for {user} refused: cannot read the account database: {error}",
                    user=name,
                    error=failure.getErrorMessage(),
                )
            else:
                self.log.failure("Could not check the password of {user}", failure, user=name)
            return Failure(UnauthorizedLogin(f"user {name}: the password could not be checked"))

        result: Deferred[Union[bytes, tuple[()]]] = d.addCallback(checked)
        result.addErrback(failed)
        return result


# --- system accounts ------------------------------------------------------------


def _system_getpwnam(name: str) -> Any:
    import pwd

    return pwd.getpwnam(name)


def _days_since_epoch() -> int:
    return int(time.time() // 86400)


@implementer(ICredentialsChecker)
class SystemAccountChecker(_PasswordChecker):
    """
    Users log in with their system account's password, as with libpcap's
    C{rpcapd}: the user must exist (C{getpwnam}), and the password must match
    the hash in the passwd entry or, when that is C{x} or C{*}, in the shadow
    file.  Locked accounts (C{!} or C{*} hash, or none), expired accounts and
    empty passwords never log in.  The avatar ID is the user name (bytes).
    Reading the shadow file needs root.  Unlike libpcap's C{rpcapd}, the
    daemon does not switch to the user's uid after the login.

    @param reactor: whose thread pool hashes (default: the global reactor).
    @param run_blocking: runs the blocking check instead (tests run it in place).
    @param shadow_path: the shadow file, read at every login.
    @param getpwnam: looks a user up, as C{pwd.getpwnam}.
    @param today: days since 1970-01-01, for account expiry.
    @raise CryptUnavailable: if there is no crypt to check hashes with.
    """

    def __init__(
        self,
        reactor: Any = None,
        run_blocking: Optional[BlockingRunner] = None,
        *,
        shadow_path: str = "/etc/shadow",
        getpwnam: Callable[[str], Any] = _system_getpwnam,
        today: Callable[[], int] = _days_since_epoch,
    ) -> None:
        super().__init__(reactor, run_blocking)
        self.shadow_path = shadow_path
        self._getpwnam = getpwnam
        self._today = today
        if os.path.exists(shadow_path) and not os.access(shadow_path, os.R_OK):
            self.log.warn(
                "{path} is not readable: system account logins with shadowed passwords will fail",
                path=shadow_path,
            )

    def _dummy_method(self) -> str:
        return "yescrypt" if self._backend.gensalt(b"$y$", 0) else "sha512"

    def _shadow_entry(self, name: str) -> Optional[list[str]]:
        with open(self.shadow_path, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if fields[0] == name:
                    return fields
        return None

    def _check(self, name: str, password: bytes) -> Optional[str]:
        try:
            entry = self._getpwnam(name)
        except KeyError:
            self._burn_time(password)
            return "no such user"
        hashed = entry.pw_passwd
        if hashed in ("x", "*"):
            fields = self._shadow_entry(name)
            if fields is None or len(fields) < 2:
                self._burn_time(password)
                return f"no entry in {self.shadow_path}"
            hashed = fields[1]
            if len(fields) > 7 and fields[7]:
                try:
                    expired = self._today() >= int(fields[7])
                except ValueError:
                    expired = True
                if expired:
                    self._burn_time(password)
                    return "account expired"
        if is_locked(hashed):
            self._burn_time(password)
            return "account locked or without a password"
        if not _verify(self._backend, password, hashed):
            return "wrong password"
        return None


# --- password files -------------------------------------------------------------


def _check_user_name(user: str) -> None:
    if (
        not user
        or user.startswith("#")
        or ":" in user
        or any(c.isspace() for c in user)
        or not user.isprintable()
    ):
        raise ValueError(
            f"invalid user name {user!r}: it must be non-empty, printable, without ':' or spaces, "
            "and not start with '#'"
        )


def _parse_lines(
    data: bytes, name: str, acceptable: Optional[Callable[[bytes], bool]] = None
) -> list[tuple[Optional[str], str]]:
    """Each line as C{(user, line)}, C{user} being C{None} for comments and blank lines."""
    seen: set[str] = set()
    lines: list[tuple[Optional[str], str]] = []
    for number, raw in enumerate(data.splitlines(), 1):
        where = f"{name}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeError:
            raise PasswordFileError(f"{where}: not UTF-8 text") from None
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            lines.append((None, line))
            continue
        user, sep, hashed = stripped.partition(":")
        if not sep or not user or not hashed or ":" in hashed or any(c.isspace() for c in stripped):
            raise PasswordFileError(f"{where}: malformed line, expected USER:HASH")
        if user in seen:
            raise PasswordFileError(f"{where}: {user!r} appears a second time")
        seen.add(user)
        if (
            acceptable is not None
            and not is_locked(hashed)
            and not acceptable(hashed.encode("ascii", "replace"))
        ):
            raise PasswordFileError(
                f"{where}: the hash of {user!r} is not a crypt-style hash this system supports "
                "(make one with rpcapd-passwd)"
            )
        lines.append((user, stripped))
    return lines


def read_password_file(path: str) -> dict[str, str]:
    """
    The users of a password file (C{USER:HASH} lines, C{#} comments, blank
    lines) and their hashes.  Raises L{PasswordFileError} naming the file
    and line for a malformed line, a repeated user or a hash method this
    system does not support, or when the file cannot be read.
    """
    backend = _crypt_backend()
    return _read_users(path, backend.setting_acceptable)


def _read_users(path: str, acceptable: Optional[Callable[[bytes], bool]]) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PasswordFileError(f"cannot read password file {path}: {e.strerror or e}") from None
    users = {}
    for user, line in _parse_lines(data, path, acceptable):
        if user is not None:
            users[user] = line.partition(":")[2]
    return users


@implementer(ICredentialsChecker)
class HashedPasswordFileChecker(_PasswordChecker):
    """
    Users and crypt-style password hashes from a file of C{USER:HASH} lines,
    like an htpasswd file (C{rpcapd-passwd} writes them).  The file is read
    now, so that a broken one stops the daemon from starting
    (L{PasswordFileError} names the line), and read again whenever it
    changes.  While a changed file is broken nobody logs in: the error is
    logged at each attempt.  The avatar ID is the user name (bytes).

    @param reactor: whose thread pool hashes (default: the global reactor).
    @param run_blocking: runs the blocking check instead (tests run it in place).
    @raise CryptUnavailable: if there is no crypt to check hashes with.
    """

    def __init__(self, path: str, reactor: Any = None, run_blocking: Optional[BlockingRunner] = None) -> None:
        super().__init__(reactor, run_blocking)
        self.path = path
        self._lock = threading.Lock()
        self._stamp: Optional[tuple[int, int, int, int]] = self._file_stamp()
        self._users: dict[str, str] = _read_users(path, self._backend.setting_acceptable)
        self._error: Optional[str] = None

    def _file_stamp(self) -> tuple[int, int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise PasswordFileError(f"cannot read password file {self.path}: {e.strerror or e}") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def _current_users(self) -> dict[str, str]:
        """The users as the file now says; raises L{PasswordFileError} while it is broken."""
        with self._lock:
            try:
                stamp = self._file_stamp()
            except PasswordFileError as e:
                self._stamp, self._error = None, str(e)
                raise
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._users = _read_users(self.path, self._backend.setting_acceptable)
                    self._error = None
                except PasswordFileError as e:
                    self._users, self._error = {}, str(e)
            if self._error is not None:
                raise PasswordFileError(self._error)
            return self._users

    def _check(self, name: str, password: bytes) -> Optional[str]:
        hashed = self._current_users().get(name)
        if hashed is None:
            self._burn_time(password)
            return "no such user"
        if is_locked(hashed):
            self._burn_time(password)
            return "account locked"
        if not _verify(self._backend, password, hashed):
            return "wrong password"
        return None


def set_password(path: str, user: str, hashed: str) -> bool:
    """
    Give C{user} the hash C{hashed} in the password file C{path}: replace
    their line, or add one (creating the file).  Other lines and comments
    stay as they were.  The new file replaces the old one atomically, with
    mode 0600 (and, as root, the old file's owner).  Returns whether the
    user was already there.  Raises L{PasswordFileError} if the existing
    file is malformed, C{ValueError} for a bad user name or hash.
    """
    _check_user_name(user)
    if is_locked(hashed) or any(c.isspace() or c == ":" for c in hashed):
        raise ValueError("not a usable password hash")
    try:
        with open(path, "rb") as f:
            data = f.read()
        st: Optional[os.stat_result] = os.stat(path)
    except FileNotFoundError:
        data, st = b"", None
    except OSError as e:
        raise PasswordFileError(f"cannot read password file {path}: {e.strerror or e}") from None
    lines = _parse_lines(data, path)
    new_line = f"{user}:{hashed}"
    existed = any(u == user for u, _ in lines)
    text = [new_line if u == user else line for u, line in lines]
    if not existed:
        text.append(new_line)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        if st is not None and os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
            os.fchown(fd, st.st_uid, st.st_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in text))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return existed


# --- rpcapd-passwd ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpcapd-passwd",
        description="Add a user to an rpcapd password file (twistd rpcapd --auth hashfile:FILE), "
        "or change their password.  The file is replaced atomically and left with mode 0600.",
    )
    parser.add_argument("file", metavar="FILE", help="the password file (created if missing)")
    parser.add_argument("user", metavar="USER", help="the user name")
    parser.add_argument(
        "--stdin", action="store_true", help="read the password from the first line of standard input"
    )
    parser.add_argument(
        "--method",
        choices=list(METHODS),
        default="sha512",
        help="hash method (default sha512; yescrypt needs libxcrypt)",
    )
    return parser


def _read_new_password(user: str, from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        return password[:-1] if password.endswith("\r") else password
    password = getpass.getpass(f"New password for {user}: ")
    if getpass.getpass("Again: ") != password:
        raise ValueError("the passwords differ")
    return password


def main(argv: Optional[list[str]] = None) -> int:
    """C{rpcapd-passwd [--stdin] [--method M] FILE USER}; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        _check_user_name(args.user)
        password = _read_new_password(args.user, args.stdin)
        if not password:
            raise ValueError("empty password")
        existed = set_password(args.file, args.user, hash_password(password, args.method))
    except (ValueError, CryptUnavailable, OSError, EOFError) as e:
        sys.stderr.write(f"rpcapd-passwd: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    sys.stderr.write(f"{'Changed the password of' if existed else 'Added'} {args.user} in {args.file}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
