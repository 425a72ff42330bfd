"""Pure core: records, usage, money, prices, routing, budgets and settings; no I/O, no aiohttp, no typer."""
