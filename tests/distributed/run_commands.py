"""Run several ``opencir`` command lines in one process, as one torchrun launch (test helper).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/run_commands.py SPEC.json

SPEC.json is a list of argv lists for ``opencir.cli.main``; ``{RANK}`` in an argument is
replaced by the rank (to give ranks different configs on purpose). After each command,
``SPEC.json.rank<R>.json`` gets every finished command's exit code and error output.
``OPENCIR_TEST_KILL=<rank>:<step>`` SIGKILLs that rank when it starts its step-th training
step (0-based, counted over epochs) of the last command: a rank dying mid-epoch.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys


def _arm_kill(spec: str) -> None:
    from opencir.training.trainer import Trainer

    rank, step = (int(v) for v in spec.split(":"))
    if int(os.environ.get("RANK", "0")) != rank:
        return
    original = Trainer._step
    seen = {"steps": 0}

    def dying_step(self, *args, **kwargs):
        if seen["steps"] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        seen["steps"] += 1
        return original(self, *args, **kwargs)

    Trainer._step = dying_step


def main(spec_file: str) -> int:
    from opencir.cli import main as opencir_main

    rank = os.environ.get("RANK", "0")
    commands = json.load(open(spec_file))
    results = []
    for number, argv in enumerate(commands):
        if number == len(commands) - 1 and os.environ.get("OPENCIR_TEST_KILL"):
            _arm_kill(os.environ["OPENCIR_TEST_KILL"])
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            code = opencir_main([a.replace("{RANK}", rank) for a in argv])
        results.append({"argv": argv, "code": code, "stderr": errors.getvalue()})
        with open(f"{spec_file}.rank{rank}.json", "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
