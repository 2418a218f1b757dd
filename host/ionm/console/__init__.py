"""The case console: case store, engine, web console with remote oversight (docs/CONSOLE.md).

Modules, each with one job:
- store: the case store on SQLite (WAL), append-only, written in batches by one writer thread.
- auth: user accounts (argon2), roles, signed session cookies, login rate limiting.
- stimulation: the stimulation interface the console commands go through, bounded by hardware/board.json.
- simcase: a simulated case (scenario physiology rendered sweep by sweep) as a sweep source.
- engine: case state built from sweeps through the pipeline; commands; frames for the web clients.
- server: aiohttp app (pages, WebSocket), per-client latest-state queues.
"""
