"""Writes go only where a file belongs (issue 24, part 1): every writer of nprnn goes through
``atomic_write``, which replaces only a regular file.  A character device is written into in
place, as ``open()`` would (``--checkpoint /dev/null`` discards the checkpoint and leaves
``/dev/null`` a device); a FIFO, a directory or a socket is refused with an error that names
it, and stays.  A symlink to a regular file updates its target.  A conversion onto its own
source is refused before anything is written.  Every node is made in the test's temporary
directory, never a system path."""
import os
import socket
import stat

import numpy as np
import pytest

import nprnn
from nprnn.interop.serialization import atomic_write, load_checkpoint, load_into, save, save_checkpoint


def _writers():
    m = nprnn.LSTM(3, 4, seed=0)
    yield "save", lambda p: save(m, p)
    yield "save .npz", lambda p: save(m, p, format="npz")
    yield "save_checkpoint", lambda p: save_checkpoint(p, m, step=1)
    try:
        import onnx  # noqa: F401

        from nprnn.interop.onnx import export

        yield "export onnx", lambda p: export(m, p)
    except ImportError:
        pass
    try:
        import matplotlib  # noqa: F401

        from nprnn.teach.diagram import unrolled

        yield "plot", lambda p: unrolled(m, 3, p)
    except ImportError:
        pass


WRITERS = list(_writers())


@pytest.mark.parametrize("name,write", WRITERS, ids=[w[0] for w in WRITERS])
def test_a_fifo_is_refused_and_stays(tmp_path, name, write):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"pipe\.png.*FIFO"):
        write(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize("name,write", WRITERS, ids=[w[0] for w in WRITERS])
def test_a_directory_is_refused_and_stays(tmp_path, name, write):
    d = tmp_path / "adir"
    d.mkdir()
    (d / "inside").write_text("kept")
    with pytest.raises(ValueError, match=r"adir.*a directory"):
        write(d)
    assert (d / "inside").read_text() == "kept"


def test_a_socket_is_refused_and_stays(tmp_path):
    path = str(tmp_path / "s.sock")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(path)
        with pytest.raises(ValueError, match="a socket"):
            atomic_write(path, b"x")
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        sock.close()


def test_a_character_device_is_written_in_place(tmp_path):
    """A null device made in the temporary directory (where the system lets the tests make
    one: root, or a filesystem that allows device nodes)."""
    dev = tmp_path / "null"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        with open(dev, "wb") as f:
            f.write(b"")
    except (PermissionError, OSError) as exc:
        pytest.skip(f"no device node can be made here: {exc}")
    m = nprnn.LSTM(3, 4, seed=0)
    for write in (lambda p: save(m, p), lambda p: save_checkpoint(p, m, step=1)):
        write(dev)
        assert stat.S_ISCHR(os.stat(dev).st_mode)  # still the device, not a regular file
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []


def test_a_symlink_to_a_file_updates_its_target(tmp_path):
    target = tmp_path / "w.safetensors"
    link = tmp_path / "link.safetensors"
    save(nprnn.LSTM(3, 4, seed=0), target)
    os.symlink(target, link)
    m = nprnn.LSTM(3, 4, seed=1)
    save(m, link)
    assert os.path.islink(link)
    fresh = nprnn.LSTM(3, 4, seed=2)
    load_into(fresh, target)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k], v)


def test_converting_a_file_onto_itself_is_refused(tmp_path):
    from nprnn.interop.convert import convert

    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, nprnn.LSTM(3, 4, seed=0), step=7)
    before = path.read_bytes()
    for dst in (path, tmp_path / "." / "ck.safetensors"):
        with pytest.raises(ValueError, match="is the source file"):
            convert(path, dst, log=lambda *a: None)
    hard = tmp_path / "hard.safetensors"
    os.link(path, hard)
    with pytest.raises(ValueError, match="is the source file"):
        convert(path, hard, log=lambda *a: None)
    assert path.read_bytes() == before
    assert load_checkpoint(path, nprnn.LSTM(3, 4, seed=1))["step"] == 7


def test_a_missing_directory_is_named_as_the_user_gave_it(tmp_path):
    """Not the temporary file's name: the directory of the path the user gave."""
    target = tmp_path / "no" / "such" / "w.safetensors"
    with pytest.raises(FileNotFoundError, match=r"cannot write .*w\.safetensors.*no such directory .*such") as err:
        save(nprnn.LSTM(3, 4, seed=0), target)
    assert ".tmp-" not in str(err.value)


def test_convert_refuses_pt_output_before_reading(tmp_path):
    from nprnn.interop.convert import convert

    src = tmp_path / "w.safetensors"
    save(nprnn.LSTM(3, 4, seed=0), src)
    said = []
    with pytest.raises(ValueError, match="nprnn does not write .pt files"):
        convert(src, tmp_path / "x.pt", log=said.append)
    assert said == [] and not (tmp_path / "x.pt").exists()
