"""The per-developer sidecar: a local aiohttp proxy that Claude Code talks to."""
