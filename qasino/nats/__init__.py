"""NATS JetStream mode (``--nats``): replicated Qasino servers on one stream.

Nothing here is imported unless the server runs with ``--nats`` (or a
client with ``--nats``); the NATS client library (nats-py) is imported only
by :mod:`qasino.nats.bridge`. See docs/scaling.md.
"""
