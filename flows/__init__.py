"""Playbook -> plan -> Prefect flow, and the lifecycle CLI."""
