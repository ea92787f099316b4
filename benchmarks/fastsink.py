#!/usr/bin/env python3
"""An SMTP sink that answers as fast as asyncio can: the stand-in for Postfix's
smtp-sink when Postfix is not there (``honest.py --sink asyncio``).

Listens on 127.0.0.1:PORT (0: a free one), prints ``ready PORT`` once it listens, takes
any number of sessions (EHLO offers PIPELINING, 8BITMIME and SMTPUTF8; every MAIL,
RCPT, RSET and NOOP gets 250, DATA 354 and the end of the data 250), and on SIGTERM or
SIGINT prints ``messages N`` (the messages it took: each end of data answered 250) and
exits. Replies to pipelined commands go out in one write. Nothing is parsed or kept.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

EHLO = b"250-sink.localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
END = b"\r\n.\r\n"


class Counter:
    messages = 0


class Session(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.in_data = False
        self.scanned = 0  # where the search for the end of the data goes on from
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 sink.localhost ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        replies = bytearray()
        quit_ = False
        while buffer:
            if self.in_data:
                if self.scanned == 0 and buffer.startswith(b".\r\n"):  # empty message
                    end, skip = 0, 3
                else:
                    end = buffer.find(END, max(self.scanned - 4, 0))
                    skip = 5
                if end < 0:
                    self.scanned = len(buffer)
                    break
                del buffer[: end + skip]
                self.in_data = False
                self.scanned = 0
                Counter.messages += 1
                replies += b"250 2.0.0 Ok: queued\r\n"
                continue
            eol = buffer.find(b"\r\n")
            if eol < 0:
                break
            verb = bytes(buffer[:4]).upper()
            del buffer[: eol + 2]
            if verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP", b"HELO"):
                replies += b"250 2.0.0 Ok\r\n"
            elif verb == b"EHLO":
                replies += EHLO
            elif verb == b"DATA":
                replies += b"354 End data with <CR><LF>.<CR><LF>\r\n"
                self.in_data = True
                self.scanned = 0
            elif verb == b"QUIT":
                replies += b"221 2.0.0 Bye\r\n"
                quit_ = True
                break
            else:
                replies += b"502 5.5.2 Error: command not recognized\r\n"
        assert self.transport is not None
        if replies:
            self.transport.write(bytes(replies))
        if quit_:
            self.transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Session, "127.0.0.1", port, backlog=1000)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    print(f"messages {Counter.messages}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
