"""
README.md's commands, run: every shell command in its fenced C{sh} blocks
that can run on loopback runs here, and the test fails if one breaks.

README.md is read afresh by every test.  Each line of a C{sh} (or C{bash},
C{shell}) block is a command, its trailing C{# comment} dropped (lines
continued with a backslash are joined; comment-only lines are skipped).
Every command must match a rule in L{RULES}, which says how it is run or
why it cannot run on loopback: a new command the rules do not know fails
L{ClassificationTests}, so no README command goes untested unnoticed.
C{python} blocks are executed.  C{python -m rpcapsvc.test.test_readme}
prints what is run, with which substitutions, and what is not and why.

Runnable commands run as written, without a shell, from the console
scripts of the Python running the tests (C{rpcap-dump}, C{rpcapd} and
C{twistd} resolve to C{os.path.dirname(sys.executable)}), each in a fresh
temporary working directory (so relative output files such as
C{ten.pcapng}, and C{twistd}'s C{twistd.pid}, land there), with only the
substitutions in L{SUBSTITUTIONS}: the host placeholder C{server} becomes
C{127.0.0.1}, the interface placeholder C{eth0} becomes C{lo}, and an
absolute path (C{/var/lib/rpcap}) is moved under the working directory.

 - Daemon lines (C{twistd -n rpcapd ...}, C{rpcapd -n ...}) start in the
   background on the README's port (2002), and every C{rpcap-dump -D} and
   C{rpcap-dump -c N -w FILE} line whose URL names that port runs against
   each of them.  Then they get SIGTERM and must exit cleanly.
 - C{rpcap-dump -c N -w FILE URL [FILTER]} runs while the test makes
   loopback traffic that FILTER matches (L{FILTER_TRAFFIC}) until it
   exits: status 0, and FILE must hold N packets that tshark can read.
 - C{rpcap-dump --active PORT ...} is paired with a daemon the test starts
   as C{twistd -n rpcapd --active 127.0.0.1:PORT --null-auth}
   (L{PAIRED_DAEMON}: the README's active side runs on other machines); once
   capturing it gets SIGINT, and must exit 0 having written its file.
 - C{twistd -n rpcapcollect ...} records the same paired daemon until a
   file appears, gets SIGTERM, and its files must be readable.

No process may print "Traceback" or "Unhandled".  The README's ports (2002,
2003) are fixed: where one is in use, the tests needing it skip and say by
what.  Capturing needs root or C{CAP_NET_RAW}: without it, everything that
captures skips and says so (the interface listings still run).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from . import _peers
from ._e2e import REPO_ROOT, Traffic

README = REPO_ROOT / "README.md"

#: Where the console scripts the README's commands name are: beside this Python.
BIN = os.path.dirname(sys.executable)

#: The programs a runnable README command may start (resolved to L{BIN}).
PROGRAMS = ("rpcap-dump", "rpcapd", "twistd")

SHELL_LANGUAGES = ("sh", "bash", "shell")
PYTHON_LANGUAGES = ("python", "py")

#: Words that need a shell: a runnable command must not contain them.
SHELL_OPERATORS = ("|", "||", "&", "&&", ";", ">", ">>", "<", "2>", "2>&1")

#: The ports rpcap:// URLs and rpcapcollect default to (RPCAP's, and active mode's).
RPCAP_PORT = 2002
ACTIVE_PORT = 2003

#: Seconds to wait for a daemon to listen, a capture to start, a client to finish.
STARTUP_TIMEOUT = 15.0
CLIENT_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


# --- README.md: its commands and Python snippets ---------------------------------------


@dataclass(frozen=True)
class Command:
    """One shell command of README.md: C{text} as written, its comment dropped."""

    text: str
    line: int
    section: str


@dataclass(frozen=True)
class Snippet:
    """One fenced C{python} block of README.md."""

    source: str
    line: int


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)")


def _drop_comment(line: str) -> str:
    """C{line} without a shell comment: a C{#} starting a word, outside quotes."""
    quote: Optional[str] = None
    escaped = False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def read_readme(text: Optional[str] = None) -> tuple[list[Command], list[Snippet]]:
    """The shell commands and Python snippets of README.md (read now, unless given C{text})."""
    lines = (README.read_text() if text is None else text).splitlines()
    commands: list[Command] = []
    snippets: list[Snippet] = []
    section = ""
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            if lines[i].startswith("#"):
                section = lines[i].lstrip("#").strip()
            i += 1
            continue
        fence, language = opening.group(1), opening.group(2).lower()
        start = i + 1
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].strip().startswith(fence[0] * len(fence)):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if language in PYTHON_LANGUAGES:
            snippets.append(Snippet("\n".join(body) + "\n", start + 1))
        elif language in SHELL_LANGUAGES:
            pending, pending_line = "", 0
            for offset, raw in enumerate(body):
                if not pending:
                    pending_line = start + 1 + offset
                if raw.rstrip().endswith("\\"):
                    pending += raw.rstrip()[:-1] + " "
                    continue
                command = _drop_comment(pending + raw).strip()
                pending = ""
                if command:
                    commands.append(Command(command, pending_line, section))
    return commands, snippets


# --- how each command is run, or why it is not ------------------------------------------

NOT_RUN = "not run"
DAEMON = "daemon"
LIST = "list interfaces"
CAPTURE = "capture to a file"
ACTIVE_DUMP = "active-mode rpcap-dump"
COLLECTOR = "collector"


@dataclass(frozen=True)
class Rule:
    """Commands matching C{pattern} (C{re.fullmatch}) are run as C{kind}; C{why} says how, or why not."""

    pattern: str
    kind: str
    why: str


#: The first rule matching a command classifies it.  A command no rule matches fails the tests.
RULES: tuple[Rule, ...] = (
    Rule(
        r"make run",
        NOT_RUN,
        "installs system packages (apt) and the package into the venv before it runs the daemon; "
        "the daemon it runs is the README's `twistd -n rpcapd --listen tcp:2002:interface=127.0.0.1 "
        "--null-auth` line, which is run here",
    ),
    Rule(r"make test", NOT_RUN, "CI runs it (.ci/run), and it runs this test"),
    Rule(
        r"pip install \.",
        NOT_RUN,
        "installs into whichever pip is first on PATH; the tests run the console scripts of the "
        "venv running them, installed by `make install-test`",
    ),
    Rule(r".*\|\s*wireshark\b.*", NOT_RUN, "Wireshark needs a screen"),
    Rule(
        r"tshark -i rpcaps?://.*",
        NOT_RUN,
        "Debian's and Ubuntu's libpcap has no remote capture (the README says so)",
    ),
    Rule(
        r"rpcapd (.* )?-d\b.*",
        NOT_RUN,
        "-d daemonizes system-wide: it detaches (so it cannot be stopped as a child), writes a "
        "pidfile under /run and, with -L, logs to syslog",
    ),
    Rule(
        r"twistd -n rpcapd (?!.*--active)(?!.*--no-passive).*",
        DAEMON,
        "started in the background on its port; the rpcap-dump -D and -c N lines run against it; "
        "SIGTERM, clean exit",
    ),
    Rule(
        r"rpcapd (?!(.* )?-[avd]\b).*-n\b.*",
        DAEMON,
        "started in the background on its port; the rpcap-dump -D and -c N lines run against it; "
        "SIGTERM, clean exit",
    ),
    Rule(
        r"rpcap-dump -D rpcap://\S+",
        LIST,
        "against each README daemon listening on the URL's port: exit 0, lo listed",
    ),
    Rule(
        r"rpcap-dump(?!.* --active)(?=.* (-c|--count) \d+\b)(?=.* (-w|--write) (?!-( |$))\S)"
        r".* rpcap://\S+( .*)?",
        CAPTURE,
        "against each README daemon listening on the URL's port, while the test makes loopback "
        "traffic the filter matches: exit 0, N packets in the file, readable by tshark",
    ),
    Rule(
        r"rpcap-dump --active \S+( .*)?",
        ACTIVE_DUMP,
        "with a daemon started by the test (twistd -n rpcapd --active 127.0.0.1:PORT --null-auth); "
        "SIGINT once capturing: exit 0, file written and readable by tshark",
    ),
    Rule(
        r"twistd -n rpcapcollect .*",
        COLLECTOR,
        "records a daemon started by the test (twistd -n rpcapd --active 127.0.0.1:PORT --null-auth) "
        "until a file appears; SIGTERM, clean exit, files readable by tshark",
    ),
)


def classify(command: Command) -> Optional[Rule]:
    """The first rule matching C{command} (its words joined by single spaces), if any."""
    text = " ".join(command.text.split())
    for rule in RULES:
        if re.fullmatch(rule.pattern, text):
            return rule
    return None


#: The daemon the test runs to connect to the README's active-mode listeners (rpcap-dump
#: --active, twistd rpcapcollect): on a real fleet it runs on other machines.  C{{port}} is
#: the listener's port.
PAIRED_DAEMON = ("twistd", "-n", "rpcapd", "--active", "127.0.0.1:{port}", "--null-auth")


@dataclass(frozen=True)
class Substitution:
    """A word matching C{pattern} (C{re.sub}) is rewritten by C{replace(match, workdir)}."""

    pattern: str
    replace: Callable[[re.Match[str], str], str]
    why: str


#: Every change made to a README command before it runs.
SUBSTITUTIONS: tuple[Substitution, ...] = (
    Substitution(
        r"^(rpcaps?://)server(?=[:/]|$)",
        lambda m, _: m[1] + "127.0.0.1",
        "`server` stands for the daemon's host: here, the README's daemon on loopback",
    ),
    Substitution(
        r"^(rpcaps?://[^/]*/)?eth\d+$",
        lambda m, _: (m[1] or "") + "lo",
        "`eth0` stands for a network interface: here, loopback's, where the test makes traffic",
    ),
    Substitution(
        r"^/.+",
        lambda m, workdir: os.path.join(workdir, m[0].lstrip("/")),
        "an absolute path (/var/lib/rpcap) is moved under the command's temporary working "
        "directory, where relative ones land too",
    ),
)


def prepare(command: Command, workdir: str) -> tuple[list[str], list[str]]:
    """
    The argument vector to run C{command} with in C{workdir}, and the
    substitutions made (C{"before -> after"}).  Raises C{AssertionError} if
    it needs a shell or runs something other than L{PROGRAMS}.
    """
    words = shlex.split(command.text)
    operators = [word for word in words if word in SHELL_OPERATORS]
    if operators:
        raise AssertionError(f"README.md:{command.line}: `{command.text}` needs a shell ({operators})")
    if words[0] not in PROGRAMS:
        raise AssertionError(
            f"README.md:{command.line}: `{command.text}` runs {words[0]}, not one of {PROGRAMS}"
        )
    made = []
    for i, word in enumerate(words[1:], 1):
        new = word
        for substitution in SUBSTITUTIONS:
            found = re.search(substitution.pattern, new)
            if found:
                new = new[: found.start()] + substitution.replace(found, workdir) + new[found.end() :]
        if new != word:
            made.append(f"{word} -> {new}")
            words[i] = new
    return [os.path.join(BIN, words[0]), *words[1:]], made


def option(argv: Sequence[str], *names: str) -> Optional[str]:
    """The value of the first of C{names} in C{argv} (C{-c 10}, C{--count 10}, C{--count=10})."""
    for i, word in enumerate(argv):
        if word in names and i + 1 < len(argv):
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and word.startswith(name + "="):
                return word[len(name) + 1 :]
    return None


def listen_port(argv: Sequence[str], default: int) -> int:
    """The port a daemon command listens on: C{--listen tcp:PORT...}, C{ADDR:PORT}, C{PORT}, or C{-p PORT}."""
    listen = option(argv, "--listen")
    if listen is not None:
        found = re.search(r"(?:^|:)(\d+)(?::|$)", listen)
        assert found, f"cannot tell the port of --listen {listen}"
        return int(found[1])
    port = option(argv, "-p")
    return int(port) if port is not None else default


def url_port(argv: Sequence[str]) -> int:
    """The port of an C{rpcap://HOST[:PORT]/} URL in C{argv}."""
    for word in argv:
        found = re.match(r"rpcaps?://(?:\[[^\]]*\]|[^/:]*)(?::(\d+))?(?:/|$)", word)
        if found:
            return int(found[1]) if found[1] else RPCAP_PORT
    raise AssertionError(f"no rpcap:// URL in {argv}")


def capture_filter(argv: Sequence[str]) -> str:
    """The capture filter of an C{rpcap-dump} command: C{-f}, or the words after the URL."""
    given = option(argv, "-f", "--filter")
    if given is not None:
        return given
    [url] = [i for i, word in enumerate(argv) if word.startswith(("rpcap://", "rpcaps://"))]
    after = list(argv[url + 1 :])
    assert not any(word.startswith("-") for word in after), f"options after the URL in {argv}"
    return " ".join(after)


# --- traffic a capture filter matches ---------------------------------------------------


class Maker:
    """Loopback traffic: C{send} makes some more of it."""

    def send(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Udp(Maker):
    """UDP datagrams on loopback: to C{port}, or between two sockets of the test."""

    def __init__(self, port: Optional[int]) -> None:
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver: Optional[Traffic] = None
        if port is None:
            self.receiver = Traffic()
            port = self.receiver.port
        self.port = port

    def send(self) -> None:
        for _ in range(10):
            try:
                self.sender.sendto(b"readme", ("127.0.0.1", self.port))
            except OSError:
                pass  # an ICMP port unreachable, reported back
        if self.receiver is not None:
            self.receiver.send("readme")  # and drain what it got

    def close(self) -> None:
        self.sender.close()
        if self.receiver is not None:
            self.receiver.close()


class TcpAttempts(Maker):
    """TCP connections to 127.0.0.1:C{port}: a SYN and a RST each where nothing listens."""

    def __init__(self, port: int) -> None:
        self.port = port

    def send(self) -> None:
        for _ in range(10):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
            except OSError:
                pass


#: What traffic to make for a README capture filter (C{re.fullmatch}; "" is no filter).
FILTER_TRAFFIC: tuple[tuple[str, Callable[[re.Match[str]], Maker], str], ...] = (
    ("", lambda m: Udp(None), "UDP datagrams between two sockets on 127.0.0.1"),
    (
        r"tcp (?:dst )?port (\d+)",
        lambda m: TcpAttempts(int(m[1])),
        "TCP connection attempts to 127.0.0.1:PORT",
    ),
    (r"udp (?:dst )?port (\d+)", lambda m: Udp(int(m[1])), "UDP datagrams to 127.0.0.1:PORT"),
)


def traffic_for(expression: str) -> Optional[Maker]:
    for pattern, make, _ in FILTER_TRAFFIC:
        found = re.fullmatch(pattern, expression.strip())
        if found:
            return make(found)
    return None


# --- processes ------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    return env


def _as_from_a_terminal() -> None:
    # A background job ignores SIGINT, and would pass that on: undo it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def listening(pid: int, port: int) -> bool:
    """Whether process C{pid} (or a child of it) listens on TCP C{port}."""
    import psutil

    try:
        process = psutil.Process(pid)
        for p in [process, *process.children(recursive=True)]:
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                    return True
    except psutil.Error:
        pass
    return False


def port_user(port: int) -> Optional[str]:
    """C{None} if TCP C{port} is free to listen on (on every address); else what holds it."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
            return None
        except OSError as e:
            reason = str(e)
    try:
        import psutil

        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return f"pid {c.pid}, {' '.join(psutil.Process(c.pid).cmdline())[:100]}"
    except Exception:
        pass
    return reason


class Proc:
    """A command in a subprocess of its own session, its output (standard output and error) in a file."""

    def __init__(self, argv: Sequence[str], cwd: str, label: str) -> None:
        self.argv = list(argv)
        self.label = label
        self.output_path = cwd.rstrip("/") + ".output"
        with open(self.output_path, "wb") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_as_from_a_terminal,
            )

    def output(self) -> str:
        with open(self.output_path, "rb") as f:
            return f.read().decode(errors="replace")

    def describe(self) -> str:
        status = self.process.poll()
        state = "running" if status is None else f"exit status {status}"
        return f"`{self.label}` ({state}), its output:\n{self.output()}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int) -> int:
        """Send C{sig} and wait for the exit status; C{AssertionError} if it takes too long."""
        if self.alive():
            self.process.send_signal(sig)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"still running {STOP_TIMEOUT} s after {signal.Signals(sig).name}: {self.describe()}"
            ) from None

    def kill(self) -> None:
        """Kill it and anything it started (its session), unless it has exited."""
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()


# --- the tests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    command: Command
    rule: Rule


class ReadmeTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.commands, self.snippets = read_readme()
        self.root = tempfile.mkdtemp(prefix="rpcap-readme-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.count = 0

    def planned(self, kind: str) -> list[Planned]:
        found = []
        for command in self.commands:
            rule = classify(command)
            if rule is not None and rule.kind == kind:
                found.append(Planned(command, rule))
        return found

    def workdir(self) -> str:
        self.count += 1
        path = os.path.join(self.root, str(self.count))
        os.mkdir(path)
        return path

    def need_programs(self) -> None:
        for program in PROGRAMS:
            if not os.access(os.path.join(BIN, program), os.X_OK):
                raise SkipTest(
                    f"no {program} beside {sys.executable}: install the package there (make install-test)"
                )

    def need_capture(self) -> None:
        ok, why = _peers.can_capture()
        if not ok:
            raise SkipTest(why)

    def need_port(self, port: int, planned: Planned) -> None:
        user = port_user(port)
        if user is not None:
            raise SkipTest(f"port {port} is in use ({user}); README.md's `{planned.command.text}` needs it")

    def start(self, argv: Sequence[str], cwd: str, label: str) -> Proc:
        proc = Proc(argv, cwd, label)
        self.addCleanup(proc.kill)
        return proc

    def start_readme(self, planned: Planned) -> tuple[Proc, list[str], str]:
        """Start a README command in the background: the process, its argv, its working directory."""
        cwd = self.workdir()
        argv, _ = prepare(planned.command, cwd)
        return self.start(argv, cwd, planned.command.text), argv, cwd

    def wait_listening(self, proc: Proc, port: int, planned: Planned) -> None:
        if _wait_until(lambda: listening(proc.process.pid, port) or not proc.alive(), STARTUP_TIMEOUT):
            if proc.alive():
                return
            output = proc.output()
            if re.search(r"cannot listen|address already in use", output, re.IGNORECASE):
                raise SkipTest(f"port {port} was taken meanwhile: {output.strip()[-300:]}")
            self.fail(
                f"README.md:{planned.command.line}: exited instead of listening on {port}: {proc.describe()}"
            )
        self.fail(
            f"README.md:{planned.command.line}: did not listen on {port} within {STARTUP_TIMEOUT} s: "
            f"{proc.describe()}"
        )

    def assertNoTraceback(self, proc: Proc) -> None:
        output = proc.output()
        for bad in ("Traceback", "Unhandled"):
            self.assertNotIn(bad, output, proc.describe())

    def stop_cleanly(self, proc: Proc, sig: int = signal.SIGTERM) -> None:
        """C{sig}, then a clean exit: status 0, or (twistd, after shutting down) the signal itself."""
        status = proc.stop(sig)
        self.assertIn(status, (0, -sig), proc.describe())
        self.assertNoTraceback(proc)

    def start_paired_daemon(self, port: int) -> Proc:
        cwd = self.workdir()
        words = [word.format(port=port) for word in PAIRED_DAEMON]
        return self.start([os.path.join(BIN, words[0]), *words[1:]], cwd, " ".join(words))

    def assertCaptureFile(self, path: str, count: Optional[int], proc: Proc) -> None:
        """C{path} is a capture file tshark reads (with C{count} packets, if given)."""
        self.assertTrue(os.path.isfile(path), f"{path} was not written: {proc.describe()}")
        tshark = shutil.which("tshark")
        if tshark is None:
            with open(path, "rb") as f:
                magic = f.read(4)
            pcap = (b"\x0a\x0d\x0d\x0a", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1")
            self.assertIn(magic, pcap, f"{path} is neither pcapng nor pcap (tshark is not installed)")
            return
        first = subprocess.run(
            [tshark, "-n", "-r", path, "-c", "1"], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(first.returncode, 0, f"tshark -r {path} -c 1: {first.stderr}\n{proc.describe()}")
        if count is not None:
            numbers = subprocess.run(
                [tshark, "-n", "-r", path, "-T", "fields", "-e", "frame.number"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertEqual(numbers.returncode, 0, numbers.stderr)
            self.assertEqual(len(numbers.stdout.split()), count, f"packets in {path}: {proc.describe()}")


class ClassificationTests(ReadmeTestCase):
    def test_every_command_is_classified(self) -> None:
        """Every README command is run by these tests, or the rules say why it cannot be."""
        self.assertTrue(self.commands, "no commands found in README.md's sh blocks")
        unknown = [c for c in self.commands if classify(c) is None]
        if unknown:
            self.fail(
                "README.md has commands this test does not know how to run:\n"
                + "".join(f"  README.md:{c.line}: {c.text}\n" for c in unknown)
                + "Classify each in RULES in rpcapsvc/test/test_readme.py: how it runs on loopback, "
                "or why it cannot."
            )

    def test_reading_commands(self) -> None:
        """How commands are read out of a README: comments dropped, continuations joined."""
        text = (
            "# Title\n## Part\n"
            "```sh\n"
            "make run     # a comment\n"
            "             # a comment's second line\n"
            "rpcap-dump -w x.pcapng rpcap://server/eth0 'port 1#2' # 'quoted'\n"
            "twistd -n rpcapd \\\n"
            "    --null-auth\n"
            "```\n"
            "```ini\nnot = a command\n```\n"
            "```python\nx = 1\n```\n"
        )
        commands, snippets = read_readme(text)
        self.assertEqual(
            commands,
            [
                Command("make run", 4, "Part"),
                Command("rpcap-dump -w x.pcapng rpcap://server/eth0 'port 1#2'", 6, "Part"),
                Command("twistd -n rpcapd      --null-auth", 7, "Part"),
            ],
        )
        self.assertEqual(snippets, [Snippet("x = 1\n", 14)])
        argv, made = prepare(commands[1], "/tmp/w")
        self.assertEqual(
            argv, [os.path.join(BIN, "rpcap-dump"), "-w", "x.pcapng", "rpcap://127.0.0.1/lo", "port 1#2"]
        )
        self.assertEqual(made, ["rpcap://server/eth0 -> rpcap://127.0.0.1/lo"])
        self.assertEqual(getattr(classify(commands[2]), "kind", None), DAEMON)

    def test_runnable_commands_need_no_shell(self) -> None:
        """Runnable commands start one of this package's programs, with no shell syntax."""
        problems = []
        for command in self.commands:
            rule = classify(command)
            if rule is not None and rule.kind != NOT_RUN:
                try:
                    prepare(command, self.root)
                except AssertionError as e:
                    problems.append(str(e))
        self.assertEqual(problems, [])


class PassiveDaemonTests(ReadmeTestCase):
    """The README's daemon lines, and the rpcap-dump lines run against them."""

    def against_daemons(self, kind: str, run: Callable[[Planned], None]) -> None:
        """Start each README daemon in turn and C{run} every C{kind} client line naming its port."""
        self.need_programs()
        clients = self.planned(kind)
        if not clients:
            raise SkipTest(f"README.md has no {kind} command")
        daemons = self.planned(DAEMON)
        self.assertTrue(daemons, "README.md's rpcap-dump lines need a daemon line to run against")
        ports = [listen_port(shlex.split(d.command.text), RPCAP_PORT) for d in daemons]
        for daemon, port in zip(daemons, ports):
            self.need_port(port, daemon)
        served = set()
        for daemon, port in zip(daemons, ports):
            proc, _, _ = self.start_readme(daemon)
            self.wait_listening(proc, port, daemon)
            for client in clients:
                if url_port(shlex.split(client.command.text)) == port:
                    try:
                        run(client)
                    except AssertionError as e:
                        self.fail(
                            f"README.md:{client.command.line}: `{client.command.text}` against "
                            f"README.md:{daemon.command.line}: `{daemon.command.text}`:\n{e}\n"
                            f"The daemon: {proc.describe()}"
                        )
                    served.add(client.command)
            self.assertTrue(proc.alive(), proc.describe())
            self.stop_cleanly(proc)
        unserved = [c.command.text for c in clients if c.command not in served]
        self.assertEqual(unserved, [], "no README daemon line listens where these connect")

    def test_daemons_list_interfaces(self) -> None:
        def run(client: Planned) -> None:
            cwd = self.workdir()
            argv, _ = prepare(client.command, cwd)
            proc = self.start(argv, cwd, client.command.text)
            _wait_until(lambda: not proc.alive(), CLIENT_TIMEOUT)
            self.assertFalse(proc.alive(), f"not done within {CLIENT_TIMEOUT} s: {proc.describe()}")
            self.assertEqual(proc.process.returncode, 0, proc.describe())
            self.assertNoTraceback(proc)
            self.assertRegex(proc.output(), r"(?m)^\d+\.lo\b", proc.describe())

        self.against_daemons(LIST, run)

    def test_daemons_capture_into_files(self) -> None:
        self.need_capture()

        def run(client: Planned) -> None:
            cwd = self.workdir()
            argv, _ = prepare(client.command, cwd)
            count, path = option(argv, "-c", "--count"), option(argv, "-w", "--write")
            assert count is not None and path is not None
            expression = capture_filter(argv)
            traffic = traffic_for(expression)
            if traffic is None:
                self.fail(f"add what traffic the filter {expression!r} matches to FILTER_TRAFFIC")
            self.addCleanup(traffic.close)
            proc = self.start(argv, cwd, client.command.text)
            deadline = time.monotonic() + CLIENT_TIMEOUT
            while proc.alive() and time.monotonic() < deadline:
                traffic.send()
                time.sleep(0.005)
            self.assertFalse(proc.alive(), f"not done within {CLIENT_TIMEOUT} s: {proc.describe()}")
            self.assertEqual(proc.process.returncode, 0, proc.describe())
            self.assertNoTraceback(proc)
            self.assertCaptureFile(os.path.join(cwd, path), int(count), proc)

        self.against_daemons(CAPTURE, run)


class ActiveModeTests(ReadmeTestCase):
    """The README's listeners for daemons in active mode, with a daemon connecting to each."""

    def test_active_dump(self) -> None:
        self.need_programs()
        self.need_capture()
        planned = self.planned(ACTIVE_DUMP)
        if not planned:
            raise SkipTest("README.md has no rpcap-dump --active command")
        for dump_line in planned:
            self.active_dump(dump_line)

    def active_dump(self, planned: Planned) -> None:
        where = f"README.md:{planned.command.line}"
        active = option(shlex.split(planned.command.text), "--active")
        assert active is not None
        port = int(re.findall(r"\d+", active)[-1])
        self.need_port(port, planned)
        dump, argv, cwd = self.start_readme(planned)
        self.wait_listening(dump, port, planned)
        daemon = self.start_paired_daemon(port)
        # rpcap-dump's "capturing on IFACE", or the daemon's "session=N peer=HOST:PORT capture on IFACE started".
        capturing = re.compile(r"capturing on|capture on", re.IGNORECASE)
        _wait_until(
            lambda: capturing.search(dump.output() + daemon.output()) or not dump.alive(), STARTUP_TIMEOUT
        )
        if not dump.alive() or not capturing.search(dump.output() + daemon.output()):
            self.fail(f"{where}: no capture started: {dump.describe()}\nThe daemon: {daemon.describe()}")
        status = dump.stop(signal.SIGINT)
        self.assertEqual(status, 0, f"{where}: after SIGINT: {dump.describe()}")
        self.assertNoTraceback(dump)
        path = option(argv, "-w", "--write")
        if path is not None and path != "-":
            self.assertCaptureFile(os.path.join(cwd, path), None, dump)
        self.stop_cleanly(daemon)

    def test_collector(self) -> None:
        self.need_programs()
        self.need_capture()
        planned = self.planned(COLLECTOR)
        if not planned:
            raise SkipTest("README.md has no twistd rpcapcollect command")
        for collector_line in planned:
            self.collector(collector_line)

    def collector(self, planned: Planned) -> None:
        where = f"README.md:{planned.command.line}"
        port = listen_port(shlex.split(planned.command.text), ACTIVE_PORT)
        self.need_port(port, planned)
        collector, argv, cwd = self.start_readme(planned)
        directory = os.path.join(cwd, option(argv, "-d", "--directory") or "captures")
        self.wait_listening(collector, port, planned)
        daemon = self.start_paired_daemon(port)

        def files() -> list[str]:
            try:
                return sorted(os.path.join(directory, name) for name in os.listdir(directory))
            except FileNotFoundError:
                return []

        _wait_until(lambda: files() or not collector.alive(), STARTUP_TIMEOUT)
        if not files():
            self.fail(
                f"{where}: no file in {directory}: {collector.describe()}\nThe daemon: {daemon.describe()}"
            )
        self.stop_cleanly(collector)
        self.stop_cleanly(daemon)
        for path in files():
            self.assertCaptureFile(path, None, collector)


class EmbeddingTests(ReadmeTestCase):
    def test_python_blocks_run(self) -> None:
        """Each python block of README.md runs (the embedding example builds an Application)."""
        if not self.snippets:
            raise SkipTest("README.md has no python block")
        for snippet in self.snippets:
            # Blank lines in front, so that a traceback gives README.md's line numbers.
            code = compile("\n" * (snippet.line - 1) + snippet.source, str(README), "exec")
            exec(code, {"__name__": "readme"})


def main() -> None:
    """Print what the tests do with each of README.md's commands."""
    commands, snippets = read_readme()
    for command in commands:
        rule = classify(command)
        print(f"README.md:{command.line} [{command.section}] {command.text}")
        if rule is None:
            print("    UNCLASSIFIED: add a rule to RULES")
            continue
        print(f"    {rule.kind}: {rule.why}")
        if rule.kind != NOT_RUN:
            try:
                argv, made = prepare(command, "$TMP")
            except AssertionError as e:
                print(f"    cannot run: {e}")
                continue
            for change in made:
                print(f"    substituted: {change}")
    for snippet in snippets:
        print(f"README.md:{snippet.line} python block: executed")


if __name__ == "__main__":
    main()
