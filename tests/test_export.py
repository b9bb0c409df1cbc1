"""The one output-writing path: prepare_output / output_file / write_image / write_text."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_4dstem_ml import export
from napari_4dstem_ml.export import (
    TEMP_PREFIX,
    OutputError,
    OutputExistsError,
    output_file,
    prepare_output,
    write_image,
    write_text,
)

IMG = np.arange(30, dtype=np.float32).reshape(5, 6) + 1


def _names(d):
    return sorted(p.name for p in d.iterdir())


def test_write_image_formats_round_trip(tmp_path):
    t = write_image(tmp_path / "a.tif", IMG, pixel_size_A=0.25)
    np.testing.assert_array_equal(tifffile.imread(t), IMG)
    with tifffile.TiffFile(t) as tif:
        xres = tif.pages[0].tags["XResolution"].value
        assert xres[0] / xres[1] == pytest.approx(4.0)  # pixels per Å
    np.testing.assert_array_equal(np.load(write_image(tmp_path / "a.npy", IMG)), IMG)
    write_image(tmp_path / "a.png", IMG)
    assert _names(tmp_path) == ["a.npy", "a.png", "a.tif"]


def test_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = write_image(tmp_path / "a.npy", IMG)
        q = write_text(tmp_path / "s.json", "{}")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644 and q.stat().st_mode & 0o777 == 0o644


def test_refusals_before_any_work(tmp_path):
    (tmp_path / "in.npy").write_bytes(b"input")
    os.link(tmp_path / "in.npy", tmp_path / "hard.npy")
    os.symlink(tmp_path / "in.npy", tmp_path / "soft.npy")
    inputs = [tmp_path / "in.npy"]
    for name in ("in.npy", "hard.npy", "soft.npy"):
        with pytest.raises(OutputError, match=f"{name} is the input"):
            prepare_output(tmp_path / name, overwrite=True, inputs=inputs)
    with pytest.raises(OutputExistsError, match="already exists"):
        prepare_output(tmp_path / "in.npy")
    with pytest.raises(OutputError, match="folder .*nodir does not exist"):
        prepare_output(tmp_path / "nodir" / "x.tif")
    with pytest.raises(OutputError, match="unsupported file type '.bmp'"):
        prepare_output(tmp_path / "x.bmp", suffixes=(".tif",))
    os.mkfifo(tmp_path / "fifo.tif")
    with pytest.raises(OutputError, match="not a regular file"):
        prepare_output(tmp_path / "fifo.tif", overwrite=True)
    (tmp_path / "store").mkdir()
    with pytest.raises(OutputError, match="is the input"):  # inside an input folder
        prepare_output(tmp_path / "store" / "x.tif", inputs=[tmp_path / "store"])
    assert (tmp_path / "in.npy").read_bytes() == b"input"


@pytest.mark.parametrize("image, what", [(np.full((4, 4), np.nan), "no finite"),
                                         (np.zeros((4, 4)), "all zero")])
def test_garbage_images_are_refused(tmp_path, image, what):
    with pytest.raises(OutputError, match=what):
        write_image(tmp_path / "x.tif", image)
    assert _names(tmp_path) == []


def test_target_appearing_meanwhile_is_kept(tmp_path):
    target = tmp_path / "x.npy"
    with pytest.raises(OutputExistsError, match="appeared while"):
        with output_file(target) as tmp:
            tmp.write_bytes(b"ours")
            target.write_bytes(b"theirs")
    assert target.read_bytes() == b"theirs" and _names(tmp_path) == ["x.npy"]


def test_overwrite_replaces_and_failure_keeps_old(tmp_path):
    target = tmp_path / "x.npy"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with output_file(target, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["x.npy"]
    with output_file(target, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _names(tmp_path) == ["x.npy"]


def test_oserror_of_a_write_names_the_output(tmp_path):
    import errno

    with pytest.raises(OutputError, match=r"x\.npy: could not be written \(No space left"):
        with output_file(tmp_path / "x.npy") as tmp:
            tmp.write_bytes(b"part")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert _names(tmp_path) == []
    with pytest.raises(OutputError, match="produced no file"):
        with output_file(tmp_path / "y.npy"):
            pass


def test_folder_outputs(tmp_path):
    target = tmp_path / "store.zarr"
    with output_file(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    assert _names(target) == ["a"]
    with pytest.raises(OutputExistsError):
        with output_file(target) as tmp:
            tmp.mkdir()
    with output_file(target, overwrite=True) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("2")
    assert _names(target) == ["b"] and _names(tmp_path) == ["store.zarr"]
    # a folder that appears meanwhile is not replaced either
    with pytest.raises(OutputExistsError):
        with output_file(tmp_path / "other.zarr") as tmp:
            tmp.mkdir()
            (tmp_path / "other.zarr").mkdir()
    assert _names(tmp_path) == ["other.zarr", "store.zarr"]


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"{TEMP_PREFIX}{dead}.abcd1234.{export._HOST}.model.pt"
    stale.write_bytes(b"left by a killed run")
    stale_dir = tmp_path / f"{TEMP_PREFIX}{dead}.abcd1235.{export._HOST}.store.zarr"
    stale_dir.mkdir()
    alive = tmp_path / f"{TEMP_PREFIX}{os.getppid()}.abcd1236.{export._HOST}.busy.pt"
    alive.write_bytes(b"being written by a live process")
    other_host = tmp_path / f"{TEMP_PREFIX}{dead}.abcd1237.00000000.remote.pt"
    other_host.write_bytes(b"another machine's")
    unrelated = tmp_path / ".model.pt.tmp"
    unrelated.write_bytes(b"not ours")
    write_text(tmp_path / "s.json", "{}")
    assert not stale.exists() and not stale_dir.exists()
    assert alive.exists() and other_host.exists() and unrelated.exists()


# -- the output planner (issue 21) -------------------------------------------------------------
def test_plan_refuses_an_output_that_is_another_output(tmp_path):
    from napari_4dstem_ml.export import OutputPlan

    (tmp_path / "p.tif").write_bytes(b"old")
    os.link(tmp_path / "p.tif", tmp_path / "hard.tif")
    os.symlink(tmp_path / "p.tif", tmp_path / "soft.tif")
    os.symlink(tmp_path / "new.tif", tmp_path / "dangling.tif")
    (tmp_path / "sub").mkdir()
    for other, first in (("p.tif", "p.tif"), ("hard.tif", "p.tif"), ("soft.tif", "p.tif"),
                         ("sub/../p.tif", "p.tif"), ("dangling.tif", "new.tif")):
        plan = OutputPlan(overwrite=True)
        plan.add(tmp_path / first, "-o")
        with pytest.raises(OutputError, match=rf"{other.split('/')[-1]} \(--uncertainty\) is the "
                                              rf"same file as .*{first} \(-o\)"):
            plan.add(tmp_path / other, "--uncertainty")
    plan = OutputPlan(overwrite=True)
    plan.add(tmp_path / "p.tif", "-o")
    assert plan.add(tmp_path / "q.tif", "--uncertainty") == tmp_path / "q.tif"
    assert _names(tmp_path) == ["dangling.tif", "hard.tif", "p.tif", "soft.tif", "sub"]


def test_plan_checks_inputs_learned_later(tmp_path):
    from napari_4dstem_ml.export import OutputPlan

    (tmp_path / "scan.xml").write_text("<root/>")
    plan = OutputPlan(overwrite=True)
    plan.add(tmp_path / "scan.xml", "-o")
    with pytest.raises(OutputError, match="scan.xml is the input"):
        plan.add_inputs(tmp_path / "scan.xml")


def test_fresh_names_never_replace_anything(tmp_path):
    from napari_4dstem_ml.export import OutputPlan, fresh_name

    assert fresh_name(tmp_path / "a.partial.tif") == tmp_path / "a.partial.tif"
    (tmp_path / "a.partial.tif").write_bytes(b"1")
    (tmp_path / "a.partial-2.tif").write_bytes(b"2")
    assert fresh_name(tmp_path / "a.partial.tif") == tmp_path / "a.partial-3.tif"
    plan = OutputPlan()
    plan.add(tmp_path / "a.partial-3.tif", "-o")
    assert plan.fresh(tmp_path / "a.partial.tif", "partial") == tmp_path / "a.partial-4.tif"


def test_output_files_all_or_none(tmp_path):
    """Three outputs: the third cannot be put in place (it appeared meanwhile): the two
    created before it are removed again, the one that appeared is kept, nothing else left."""
    from napari_4dstem_ml.export import output_files

    paths = [tmp_path / n for n in ("a.npy", "b.npy", "c.npy")]
    with pytest.raises(OutputExistsError, match="c.npy appeared"):
        with output_files(paths) as tmps:
            for t in tmps:
                with open(t, "xb") as f:
                    np.save(f, IMG)
            paths[2].write_bytes(b"someone else's")
    assert _names(tmp_path) == ["c.npy"] and paths[2].read_bytes() == b"someone else's"
    with output_files(paths[:2]) as tmps:
        for t in tmps:
            with open(t, "xb") as f:
                np.save(f, IMG)
    assert _names(tmp_path) == ["a.npy", "b.npy", "c.npy"]
    os.symlink(paths[0], tmp_path / "link.npy")
    with pytest.raises(OutputError, match="link.npy.*is the same file as .*a.npy"):
        with output_files([paths[0], tmp_path / "link.npy"], overwrite=True):
            pass


def test_write_images_checks_every_image_before_writing(tmp_path):
    from napari_4dstem_ml.export import write_images

    with pytest.raises(OutputError, match="b.tif: the image is all zero"):
        write_images([(tmp_path / "a.tif", IMG, None, None),
                      (tmp_path / "b.tif", np.zeros((5, 6)), None, None)])
    assert _names(tmp_path) == []
