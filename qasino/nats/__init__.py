"""NATS JetStream mode (``--nats``): replicated Qasino servers on one stream.

Nothing here is imported unless the server runs with ``--nats`` (or a
client with ``--nats``); the NATS client library (nats-py) is imported only
by :mod:`qasino.nats.bridge`. See docs/scaling.md.
"""


def require_client(prog: str) -> None:
    """Exit with one clear line when nats-py is not installed."""
    try:
        import nats  # noqa: F401
    except ImportError:
        raise SystemExit(
            f"{prog}: --nats needs the NATS client library: pip install 'qasino[nats]' (nats-py)"
        ) from None
