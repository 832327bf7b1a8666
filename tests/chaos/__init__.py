"""Crash chaos against the real authorization server (see ``engine``; run ``scripts/chaos``)."""
