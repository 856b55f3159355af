"""A run folder someone sends you never makes lorasc write outside it: a symbolic link at any path lorasc
writes in a run folder is replaced, never written through, and removing one removes the link only.
Every case checks the files the links point to, byte for byte, after the command.
"""

import hashlib
import shutil

import pytest
from conftest import TINY_CASCADE, cli, refused, tree_digest, truncate

from lorasc.run.run_files import remove, replacing, write_file

pytestmark = pytest.mark.slow


def state_of(path):
    """What is at `path`, to compare before and after: None, a file's sha256, or a folder's tree_digest."""
    if path.is_dir():
        return tree_digest(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def make_target(path, kind):
    """Something outside the run folder for a link to point at: a file, a folder with a file, or nothing."""
    if kind == "file":
        path.write_text("victim")
    elif kind == "folder":
        path.mkdir()
        (path / "model.safetensors").write_text("victim")
    return path


# ---- the write primitives, on every kind of link ----------------------------------------------
WRITES = {
    "write_file": lambda path: write_file(path, "new"),
    "replacing with a folder": lambda path: _write_folder(path),
    "remove": remove,
}


def _write_folder(path):
    with replacing(path) as folder:
        folder.mkdir()
        (folder / "new").write_text("new")


@pytest.mark.parametrize("kind", ["file", "folder", "dangling"])
@pytest.mark.parametrize("write", WRITES)
def test_a_write_replaces_a_link_and_leaves_its_target(write, kind, tmp_path):
    target = make_target(tmp_path / "outside", kind)
    before = state_of(target)
    (tmp_path / "run").mkdir()
    link = tmp_path / "run" / "entry"
    link.symlink_to(target)
    WRITES[write](link)
    assert state_of(target) == before
    assert not link.is_symlink() and link.exists() == (write != "remove")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ([] if write == "remove" else ["entry"])  # no temporary left


def test_a_failed_write_leaves_the_earlier_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("earlier")
    with pytest.raises(OSError), replacing(path) as temporary:
        temporary.write_text("half")
        raise OSError("the disk filled up")
    assert path.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# ---- eval and export of a finished run ----------------------------------------------------------
COMMAND_LINKS = {  # (command, entry in the run folder, what the link points at)
    "eval.json to a file": ("eval", "eval.json", "file"),
    "eval.json dangling": ("eval", "eval.json", "dangling"),
    "eval.json's temporary to a file": ("eval", ".eval.json.tmp", "file"),
    "adapter-r2 to an empty folder": ("export", "adapter-r2", "empty folder"),
    "adapter-r2 to an earlier export": ("export", "adapter-r2", "earlier export"),
    "adapter-r2's temporary to a folder": ("export", ".adapter-r2.tmp", "folder"),
}


@pytest.mark.parametrize("name", COMMAND_LINKS)
def test_eval_and_export_replace_links_in_the_run_folder(name, finished, tmp_path):
    command, entry, kind = COMMAND_LINKS[name]
    target = tmp_path / "outside"
    if kind == "empty folder":
        target.mkdir()
    elif kind == "earlier export":
        assert cli("export", finished, "--rank", "2", "--output", target) == 0
    else:
        make_target(target, kind)
    before = state_of(target)
    (finished / entry).symlink_to(target)
    assert cli(command, finished, *(["--rank", "2"] if command == "export" else [])) == 0
    assert state_of(target) == before
    written = finished / ("eval.json" if command == "eval" else "adapter-r2")
    assert not written.is_symlink() and (written.is_file() if command == "eval" else (written / "compression.json").is_file())
    assert not (finished / f".{written.name}.tmp").exists()


# ---- a resumed run, with a link at every path it writes ----------------------------------------
LINKED = {  # entry -> (what the link points at, what the finished run has there instead of the link)
    "log.csv": ("file", "file"),
    "loss.png": ("file", "file"),
    "metric_per_cycle.png": ("file", "file"),
    "metrics.json": ("dangling", "file"),  # a link to a file would read as a finished run
    ".lock": ("dangling", "file"),
    "LATEST": ("file", None),
    "model": ("folder", "folder"),
    "adapter": ("folder", "folder"),
    "checkpoint-4": ("checkpoint", None),
    ".exports.tmp": ("folder", None),
    ".log.csv.tmp": ("file", None),
}


@pytest.fixture(scope="module")
def resumed_through_links(interrupted_run, tmp_path_factory):
    """A copy of the interrupted run with every entry of LINKED a link out of it, resumed to its end.
    Its checkpoint-3 is truncated: the run can only resume from the linked checkpoint-4."""
    folder = tmp_path_factory.mktemp("linked")
    shutil.copy(interrupted_run.parent / "data.csv", folder)
    run, outside = shutil.copytree(interrupted_run, folder / "run"), folder / "outside"
    truncate(run / "checkpoint-3" / "state.pt")
    outside.mkdir()
    for entry, (kind, _) in LINKED.items():
        target = outside / entry
        if kind == "checkpoint":
            shutil.move(run / entry, target)
        else:
            remove(run / entry)
            make_target(target, kind)
        (run / entry).symlink_to(target)
    before = {entry: state_of(outside / entry) for entry in LINKED}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        code = cli("train", "--resume", "--output-dir", "run")
    return code, run, outside, before


@pytest.mark.parametrize("entry", LINKED)
def test_a_resumed_run_replaces_each_link_and_writes_nothing_outside(entry, resumed_through_links):
    code, run, outside, before = resumed_through_links
    assert code == 0
    assert state_of(outside / entry) == before[entry]
    left = LINKED[entry][1]
    assert not (run / entry).is_symlink()
    assert {"file": (run / entry).is_file(), "folder": (run / entry).is_dir(), None: not (run / entry).exists()}[left]


def test_a_resumed_run_reads_a_linked_checkpoint_and_removes_the_link(resumed_through_links):
    """Reading through a link writes nothing: the run resumed from the linked checkpoint-4 (checkpoint-3 is
    truncated), then removed the link with its own checkpoints."""
    code, run, outside, before = resumed_through_links
    assert code == 0 and not list(run.glob("checkpoint-*")) and (outside / "checkpoint-4" / "state.pt").is_file()


def test_a_fresh_run_refuses_a_folder_that_holds_a_link(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").symlink_to(make_target(tmp_path / "outside", "file"))
    refused(capsys, tmp_path, ["train", "--output-dir", tmp_path / "run", *TINY_CASCADE], "already holds a run", "--output-dir for a new one")
