"""Asynchronous credit-score requests answered with signed webhooks."""

__version__ = "0.1.0"
