"""Use cases that talk to an org gateway (admin API client; login and sync later): no typer or rich."""
