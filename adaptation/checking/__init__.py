"""Untrusted files checked in a child process under a memory ceiling and a time limit.

``limits.run_limited`` runs a module-level function in a fresh interpreter whose private writable
memory is capped with RLIMIT_DATA and which is killed at its wall-clock deadline; ``datasets``
checks an uploaded dataset archive that way, ``models`` an uploaded model file (the whole
pre-flight). Neither Django nor Celery is imported here (the
mechanism and its measurements: docs/untrusted-files.md).
"""
