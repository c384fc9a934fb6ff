"""Console entry points. The only module (with the clients) that imports the
global reactor, and only inside the functions."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional


def _not_yet(name: str) -> int:
    sys.stderr.write(f"{name}: not yet implemented in this release\n")
    return 2


def server_main(argv: Optional[Sequence[str]] = None) -> int:
    from qasino.server_main import main

    return main(argv)


def sqlclient_main(argv: Optional[Sequence[str]] = None) -> int:
    from qasino.clients.sqlclient import main

    return main(argv)


def publish_main(argv: Optional[Sequence[str]] = None) -> int:
    from qasino.clients.publish import main

    return main(argv)


def csvpublisher_main(argv: Optional[Sequence[str]] = None) -> int:
    from qasino.clients.csvpublisher import main

    return main(argv)
