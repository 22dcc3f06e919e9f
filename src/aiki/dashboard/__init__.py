"""The dashboard: server-rendered pages of runs, their timelines, workflows and workers."""

from aiki.dashboard._routes import create_dashboard

__all__ = ["create_dashboard"]
