"""Sandbox and test infrastructure: a Kubernetes API emulator (never a production component).

The :mod:`etj_operator.sandbox.emulator` module serves an in-memory Kubernetes API for the integration
tests and for ``make demo``; nothing in the operator imports it.
"""
