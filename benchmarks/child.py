"""Run one benchmark workload in a fresh process and report its result plus peak memory as JSON.

Two peaks are reported: ``peak_rss_mb`` (ru_maxrss: everything resident, including file pages of
memory-mapped arrays, which the kernel can drop at will) and ``peak_anon_mb`` (sampled RssAnon:
the process's own heap, what actually has to fit in RAM).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _anon_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class AnonPeak:
    """Samples RssAnon every ``interval`` seconds in a daemon thread; ``peak`` holds the maximum."""

    def __init__(self, interval: float = 0.05):
        self.peak = _anon_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval):
        while not self._stop.wait(interval):
            self.peak = max(self.peak, _anon_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _anon_mb())
        return self.peak


def run_child(module: str, func: str, timeout: float = 3600, **kwargs) -> dict:
    """Call ``module.func(**kwargs)`` in a child Python; returns its dict plus peak memory."""
    code = (
        "import json, sys, importlib\n"
        "from benchmarks.child import peak_rss_mb, AnonPeak\n"
        "mon = AnonPeak()\n"
        f"r = getattr(importlib.import_module({module!r}), {func!r})(**json.loads(sys.argv[1]))\n"
        "r['peak_anon_mb'] = round(mon.stop(), 1)\n"
        "r['peak_rss_mb'] = round(peak_rss_mb(), 1)\n"
        "print('@@RESULT@@' + json.dumps(r))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=root)
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    raise RuntimeError(f"benchmark {module}.{func} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
