"""The gateway's web dashboard at /ui: server-rendered pages, server-side sessions, no JavaScript."""
