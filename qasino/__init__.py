"""Qasino: the current state of your fleet, in SQL."""

__version__ = "0.2.0.dev0"
