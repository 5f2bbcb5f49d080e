"""Carrying out a plan against the cloud: waves, retries, waiting, the audit log."""
