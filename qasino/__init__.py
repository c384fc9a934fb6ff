"""Qasino: the current state of your fleet, in SQL."""

__version__ = "0.1.0"
