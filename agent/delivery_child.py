"""Entry of the delivery process on POSIX: ``python -m agent.delivery_child FD`` (started by
``agent.worker``). FD is its end of the control pipe; the first message on it is what
``delivery_main`` needs besides the pipe: the config, the log level, the drain bound."""
from __future__ import annotations

import sys
from multiprocessing.connection import Connection


def main() -> None:
    conn = Connection(int(sys.argv[1]))
    config, level, drain_timeout = conn.recv()
    from agent.worker import delivery_main
    delivery_main(config, conn, level, drain_timeout)


if __name__ == "__main__":
    main()
