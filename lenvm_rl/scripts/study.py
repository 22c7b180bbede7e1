"""``lenvm-rl study``: a fair, powered comparison of length methods (:mod:`lenvm_rl.study.runner`).

The job parses a recipe (YAML + CLI) into :class:`~lenvm_rl.study.runner.StudyConfig` and runs it; the runner,
tasks, methods, statistics and report live in :mod:`lenvm_rl.study`.
"""

from __future__ import annotations

import signal
import sys
import time

from ..study.runner import (
    CONFIG_FILE,
    RESULT_FILE,
    StudyConfig,
    load_results,
    print_status,
    print_summary,
    run_study,
)

__all__ = ["StudyConfig", "main", "DATACLASSES", "CONFIG_FILE", "RESULT_FILE", "load_results"]

DATACLASSES = (StudyConfig,)


def main(config: StudyConfig) -> None:
    if config.command is None:
        config.command = "lenvm-rl " + " ".join(sys.argv[1:]) if sys.argv[1:] else "lenvm-rl study"
    if config.status:
        print_status(config)
        return
    # SIGTERM (kill, a scheduler's time limit, docker stop) unwinds like Ctrl-C, so the run's claims are released
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.time()
    report = run_study(config)
    print_summary(config, report, (time.time() - started) / 60)
