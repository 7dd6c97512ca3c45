"""A gunicorn config file (`gunicorn --config`) that turns the shim on for every worker: read in
the master before it forks them. tests/test_deployments.py serves with it."""

import starlette_shield_patch  # noqa: F401
