"""A small IMAP4rev1 server on 127.0.0.1 (plain TCP, asyncio) for the real ``imaplib``.

Enough of RFC 3501 for a poller: CAPABILITY, NOOP, LOGIN (NO [AUTHENTICATIONFAILED] for a bad
password), SELECT/EXAMINE (EXISTS, UIDVALIDITY, UIDNEXT, READ-WRITE/READ-ONLY), UID SEARCH
(``ALL``, ``UID <set>``, with the rule that ``n:*`` includes the highest UID), UID FETCH
(``BODY[]``, ``BODY.PEEK[]``, ``RFC822``, ``FLAGS``, ``UID``; message bodies as literals), UID
STORE (``+FLAGS``, ``-FLAGS``, ``FLAGS``, ``.SILENT``), LOGOUT. Every command is recorded.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field

_TOKEN = re.compile(rb'"((?:[^"\\]|\\.)*)"|(\((?:[^()]|\([^()]*\))*\))|([^\s()"]+(?:\[[^\]]*\])?)')


@dataclass
class StoredMail:
    uid: int
    raw: bytes
    flags: set[str] = field(default_factory=set)


@dataclass
class Folder:
    uidvalidity: int
    mails: list[StoredMail] = field(default_factory=list)
    uidnext: int = 1


def _tokens(args: bytes) -> list[str]:
    out = []
    for quoted, paren, atom in _TOKEN.findall(args):
        if quoted or (not paren and not atom):
            out.append(re.sub(rb"\\(.)", rb"\1", quoted).decode())
        else:
            out.append((paren or atom).decode())
    return out


def _uid_set(spec: str, highest: int) -> set[int]:
    uids: set[int] = set()
    for part in spec.split(","):
        if ":" in part:
            a, b = (highest if x == "*" else int(x) for x in part.split(":", 1))
            uids.update(range(min(a, b), max(a, b) + 1))
        else:
            uids.add(highest if part == "*" else int(part))
    return uids


class ImapStandIn:
    def __init__(self, users: dict[str, str], uidvalidity: int = 1000) -> None:
        self.users = users
        self.folders = {"INBOX": Folder(uidvalidity)}
        self.commands: list[str] = []
        self.server: asyncio.Server | None = None

    # The test's side -----------------------------------------------------------------------

    def deliver(self, raw: bytes, folder: str = "INBOX") -> int:
        box = self.folders[folder]
        uid = box.uidnext
        box.uidnext += 1
        box.mails.append(StoredMail(uid, raw))
        return uid

    def renumber(self, uidvalidity: int, folder: str = "INBOX") -> None:
        """What a server does when it rebuilds a mailbox: new UIDVALIDITY, new UIDs."""
        box = self.folders[folder]
        box.uidvalidity = uidvalidity
        for number, mail in enumerate(box.mails, start=1):
            mail.uid = number
        box.uidnext = len(box.mails) + 1

    def flags(self, uid: int, folder: str = "INBOX") -> set[str]:
        return next(m.flags for m in self.folders[folder].mails if m.uid == uid)

    def count(self, command: str) -> int:
        return sum(1 for c in self.commands if c.upper().startswith(command.upper()))

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> ImapStandIn:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    # The protocol ----------------------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state: dict[str, object] = {"user": None, "folder": None, "readonly": False}

        def send(line: str | bytes) -> None:
            writer.write((line.encode() if isinstance(line, str) else line) + b"\r\n")

        send("* OK IMAP4rev1 stand-in ready")
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                command, _, args = rest.partition(b" ")
                name = command.decode().upper()
                if name == "UID":
                    sub, _, args = args.partition(b" ")
                    name = f"UID {sub.decode().upper()}"
                self.commands.append(f"{name} {args.decode(errors='replace')}".strip())
                done = self._handle(name, _tokens(args), state, send)
                send(tag + b" " + done.encode())
                await writer.drain()
                if name == "LOGOUT":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _handle(
        self,
        name: str,
        args: list[str],
        state: dict[str, object],
        send: Callable[[str | bytes], None],
    ) -> str:
        if name == "CAPABILITY":
            send("* CAPABILITY IMAP4rev1 AUTH=PLAIN UIDPLUS")
            return "OK CAPABILITY completed"
        if name == "NOOP":
            return "OK NOOP completed"
        if name == "LOGOUT":
            send("* BYE logging out")
            return "OK LOGOUT completed"
        if name == "LOGIN":
            if len(args) == 2 and self.users.get(args[0]) == args[1]:
                state["user"] = args[0]
                return "OK [CAPABILITY IMAP4rev1 UIDPLUS] LOGIN completed"
            return "NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)"
        if state["user"] is None:
            return "BAD log in first"
        if name in ("SELECT", "EXAMINE"):
            folder = self.folders.get(args[0] if args else "")
            if folder is None:
                state["folder"] = None
                return "NO [NONEXISTENT] Unknown mailbox"
            state["folder"], state["readonly"] = args[0], name == "EXAMINE"
            send("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)")
            send(f"* {len(folder.mails)} EXISTS")
            send("* 0 RECENT")
            send(f"* OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid")
            send(f"* OK [UIDNEXT {folder.uidnext}] Predicted next UID")
            mode = "READ-ONLY" if name == "EXAMINE" else "READ-WRITE"
            return f"OK [{mode}] {name} completed"
        box = self.folders.get(str(state["folder"]))
        if box is None:
            return "BAD select a mailbox first"
        highest = box.mails[-1].uid if box.mails else 0
        if name == "UID SEARCH":
            if args and args[0].upper() == "UID" and len(args) > 1:
                wanted = _uid_set(args[1], highest)
            else:
                wanted = {m.uid for m in box.mails}
            send("* SEARCH " + " ".join(str(m.uid) for m in box.mails if m.uid in wanted))
            return "OK UID SEARCH completed"
        if name == "UID FETCH" and len(args) == 2:
            wanted = _uid_set(args[0], highest)
            items = args[1].strip("()").upper().split()
            for seq, mail in enumerate(box.mails, start=1):
                if mail.uid not in wanted:
                    continue
                marks = not state["readonly"] and any(i in ("BODY[]", "RFC822") for i in items)
                if marks:
                    mail.flags.add("\\Seen")
                head = f"* {seq} FETCH (UID {mail.uid}"
                if "FLAGS" in items:
                    head += f" FLAGS ({' '.join(sorted(mail.flags))})"
                body = next((i for i in items if i in ("BODY[]", "BODY.PEEK[]", "RFC822")), None)
                if body is None:
                    send(head + ")")
                else:
                    label = "RFC822" if body == "RFC822" else "BODY[]"
                    send(f"{head} {label} {{{len(mail.raw)}}}".encode())
                    send(mail.raw + b")")  # the literal's bytes, then the list's end
            return "OK UID FETCH completed"
        if name == "UID STORE" and len(args) == 3:
            if state["readonly"]:
                return "NO mailbox is read-only"
            wanted = _uid_set(args[0], highest)
            mode = args[1].upper()
            flags = set(args[2].strip("()").split())
            for seq, mail in enumerate(box.mails, start=1):
                if mail.uid not in wanted:
                    continue
                if mode.startswith("+"):
                    mail.flags |= flags
                elif mode.startswith("-"):
                    mail.flags -= flags
                else:
                    mail.flags = set(flags)
                if not mode.endswith(".SILENT"):
                    send(f"* {seq} FETCH (UID {mail.uid} FLAGS ({' '.join(sorted(mail.flags))}))")
            return "OK UID STORE completed"
        return f"BAD unknown or malformed command {name}"
