"""Alembic's environment for the MSD schema: msd.migrate hands it the connection."""

from msd.migrate import run_environment

run_environment()
