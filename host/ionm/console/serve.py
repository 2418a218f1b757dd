"""Serve one engine and its sweep source until SIGINT/SIGTERM: what `ionm console` and `ionm replay` share."""

from __future__ import annotations

import asyncio
import signal
import webbrowser
from collections.abc import Callable, Iterable
from typing import Any

from ionm.console.engine import CaseEngine
from ionm.console.server import ConsoleServer


def serve(server: ConsoleServer, engine: CaseEngine, source: Iterable[Any], host: str, port: int, *,
          open_browser: bool, announce: Callable[[str], None], at_end: Callable[[], bool] | None = None,
          emg_source: Iterable[Any] | None = None, neuro_sources: Iterable[Any] = ()) -> None:
    """Start the web server, the engine and the source; `announce(url)` once all three run; block until a
    signal, then stop the web server (the caller stops the engine and the source, whatever happened).

    at_end (a source that ends, such as a recording): called once the source is exhausted and every sweep of it
    processed; serving stops then unless it returns True (keep serving until a signal). emg_source: free-running
    EMG blocks (ionm.sweep.EmgBlock), run beside the sweeps; neuro_sources: EEG (ionm.sweep.EegBlock) and BAEP
    (ionm.sweep.BaepBlock) sources, likewise."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        url = await server.start(host, port)
        engine.start()
        engine.run_source(source)
        if emg_source is not None:
            engine.run_emg_source(emg_source)
        for src in neuro_sources:
            if getattr(src, "stream", "").startswith("baep/"):
                engine.run_baep_source(src)
            else:
                engine.run_eeg_source(src)
        announce(url)
        if open_browser:
            webbrowser.open(url)
        if at_end is not None:
            while not stop.is_set():  # short waits: a signal must not wait for a thread
                if await loop.run_in_executor(None, engine.wait_idle, 0.5):
                    if not at_end():
                        stop.set()
                    break
        await stop.wait()
        await server.stop()

    asyncio.run(main())
