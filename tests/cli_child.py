"""`lorasc ARGS` that crashes at a chosen point, for the tests (run_cli in conftest.py with kill_at).

The process SIGKILLs itself right after writing the checkpoint of step LORASC_TEST_KILL_AT (the other
processes of a distributed run are then ended by the launcher).
"""

import os
import signal
import sys

import lorasc.run.train
from lorasc.run.cli import main

KILL_AT = int(os.environ["LORASC_TEST_KILL_AT"])
write = lorasc.run.train.save_checkpoint


def write_then_die(run_dir, step, *args):
    write(run_dir, step, *args)
    if step == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


lorasc.run.train.save_checkpoint = write_then_die
sys.exit(main(sys.argv[1:]))
