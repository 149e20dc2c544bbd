"""
The C{hashfile} cred plugin: C{twistd rpcapd --auth hashfile:PATH} checks
passwords against a file of crypt-style hashes (L{rpcapsvc.auth}).
"""

from __future__ import annotations

from typing import Any

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

HASHFILE_HELP = """
Checks user names and passwords against a file of USER:HASH lines, like an
htpasswd file: one user per line, HASH a crypt-style password hash (yescrypt
$y$, sha512-crypt $6$, sha256-crypt $5$, bcrypt $2b$), '#' starts a comment.
A hash starting with '!' or '*' locks the user out.  Write the file with

    rpcapd-passwd PATH USER

The file is read at startup (a malformed line stops the daemon, naming the
line) and again whenever it changes; keep it readable by the daemon only.
"""


@implementer(ICheckerFactory, IPlugin)
class HashedPasswordFileCheckerFactory:
    """Makes L{rpcapsvc.auth.HashedPasswordFileChecker}s from C{--auth hashfile:PATH}."""

    authType = "hashfile"
    authHelp = HASHFILE_HELP
    argStringFormat = "Path to a file of USER:HASH lines (crypt-style hashes; see rpcapd-passwd)."
    credentialInterfaces = (IUsernamePassword,)

    def generateChecker(self, argstring: str = "") -> Any:
        from rpcapsvc.auth import HashedPasswordFileChecker

        if not argstring.strip():
            raise ValueError("hashfile needs the path of the password file: --auth hashfile:PATH")
        return HashedPasswordFileChecker(argstring)


theHashedPasswordFileCheckerFactory = HashedPasswordFileCheckerFactory()
