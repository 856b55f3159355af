"""The launch commands of docs/distributed.md run lorasc's own modules only. `python -m` puts the working
folder first on sys.path, so a `yaml.py` that happens to be there would run; the console script, which
torchrun and `accelerate launch` start with --no-python, does not."""

import os
import subprocess
import sys

import pytest
from conftest import SCRIPTS

pytestmark = pytest.mark.slow

SHADOW = 'open("imported", "w").close()\nraise ImportError("the yaml.py of the working folder")\n'
ACCELERATE = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
LAUNCHES = {  # the command before `train ...`, and whether it imports the working folder's yaml.py
    "lorasc": ([SCRIPTS / "lorasc"], False),
    "torchrun --no-python lorasc": ([SCRIPTS / "torchrun", "--standalone", "--nproc_per_node", "2", "--no-python", SCRIPTS / "lorasc"], False),
    "accelerate launch --no_python lorasc": ([SCRIPTS / "accelerate", "launch", *ACCELERATE, "--no_python", SCRIPTS / "lorasc"], False),
    "python -m lorasc.run.cli": ([sys.executable, "-m", "lorasc.run.cli"], True),
}


@pytest.mark.parametrize("name", LAUNCHES)
def test_a_launch_imports_a_module_of_the_working_folder_only_under_python_m(name, tmp_path):
    command, imports = LAUNCHES[name]
    (tmp_path / "yaml.py").write_text(SHADOW)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run([*map(str, command), "train", "--lr", "nope"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "imported").exists() == imports, done.stderr[-3000:]
    if not imports:  # lorasc itself ran, on every process, and refused the bad value
        assert done.stderr.count("lorasc: error: ") == (1 if name == "lorasc" else 2) and "nope" in done.stderr, done.stderr[-3000:]
