"""The case console: the engine and the web console with remote oversight (docs/CONSOLE.md).

Modules, each with one job:
- engine: case state built from sweeps through the pipeline; commands; frames for the web clients.
- server: aiohttp app (pages, WebSocket), per-client latest-state queues; static/ holds the pages.
- auth: user accounts (argon2), roles, signed session cookies, login rate limiting.
- serve: one engine, its source and the web server until a signal (`ionm console`, `ionm replay`).
- replay: a recorded case through a fresh engine.
- scripted: a whole simulated case run unattended through the engine (tests, benchmarks).

The case record itself (store, timeline, export, report) is ionm.case; sweep sources and stimulation are
ionm.board.
"""
