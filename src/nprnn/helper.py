"""A helper process: the second core, without sharing the GIL.

Two scans on two threads of one process lose much of the second core to the GIL: a time
step is a dozen short NumPy calls, and the threads hand the GIL back and forth around
each of them (each scan runs 1.4-1.7x slower while the other runs; see
:mod:`nprnn.threads`).  Two processes do not share it.  So a run that goes side by side
sends one of its two scans to a helper process:

* a bidirectional layer: the reverse direction runs in the helper;
* a stack of one-directional layers: the odd layers run in the helper, each reading the
  layer below as it comes, exactly as the threaded pipeline does (and backward from the
  top layer down, handing input gradients on the same way).

In training the helper keeps its scans' records (their tapes, and copies of their inputs
and weights) until the backward, which runs each scan's backward where its forward ran;
a module's work arrays and records there are dropped when the module is collected or
calls ``release_buffers``.

Arrays travel through one block of shared memory (inputs, outputs, gradients and weights
are copied in, the helper's results are read in place); small messages (the jobs,
progress counts, final states, parameter gradients, errors) travel through a socket
pair, whose system calls also order the memory writes between the two processes.  The
helper is a plain Python child that imports nprnn and runs :func:`serve`, started in the
background by the first run that could use it; until it is ready, runs use threads.  It
exits when the parent's end of the socket closes.  POSIX only (it inherits the
descriptors); elsewhere, and with ``set_helper_process(False)``, runs use threads.
"""
from __future__ import annotations

import atexit
import itertools
import os
import pickle
import struct
import sys
import threading
import warnings
import weakref

import numpy as np

from . import threads

# Below this many gate values per step (rows * gates * hidden) a run stays in one process.
# Two processes share no GIL, so the line is far lower than on threads
# (nprnn.threads.MIN_STEP_WORK): benchmarks/bench_threads.py measured 1.2-1.85x (inference)
# and 0.9-1.7x (training) at 1024 and up, and 0.86x (one-directional GRU inference) to
# 1.68x (bidirectional GRU training) at 768 (2 cores).
MIN_STEP_WORK = 1024
_HEADER = struct.Struct("!I")
_ALIGN = 64
_state = {"enabled": os.name == "posix", "helper": None}
_lock = threading.Lock()


def set_helper_process(enabled: bool) -> None:
    """Whether runs that go side by side may put their second scan in a helper process
    (the default on POSIX systems) instead of on a second thread; see the module
    docstring.  Turning it off stops the helper (a pending backward of a forward that
    used it then fails)."""
    if not isinstance(enabled, bool):
        raise ValueError(f"set_helper_process: expected a bool, but got {enabled!r}")
    if enabled and os.name != "posix":
        raise ValueError("set_helper_process: a helper process needs a POSIX system (it inherits descriptors)")
    _state["enabled"] = enabled
    if not enabled:
        shutdown()


def get_helper_process() -> bool:
    """The current setting of :func:`set_helper_process`."""
    return _state["enabled"]


class HelperFailed(RuntimeError):
    """The helper process died or broke the protocol (not an error of the computation)."""


class Aborted(Exception):
    """Raised in the helper when the parent gave up on the run."""


# ------------------------------------------------------------------ shared memory, messages
class _Shared:
    """A block of shared memory both processes map; grows, never shrinks.  Old mappings
    stay valid after it grows (they map the same pages)."""

    def __init__(self, fd=None):
        import tempfile

        if fd is None:
            if hasattr(os, "memfd_create"):
                fd = os.memfd_create("nprnn-helper")
            else:
                handle, path = tempfile.mkstemp(prefix="nprnn-helper-")
                os.unlink(path)
                fd = handle
        self.fd = fd
        self.size = 0
        self.map = None

    def ensure(self, nbytes: int, grow: bool) -> None:
        import mmap

        if nbytes <= self.size:
            return
        if grow:
            nbytes = max(nbytes, 2 * self.size)
            os.ftruncate(self.fd, nbytes)
        self.map = mmap.mmap(self.fd, nbytes)
        self.size = nbytes

    def array(self, spec):
        """The array a spec ``(offset, shape, dtype)`` names."""
        offset, shape, dtype = spec
        return np.ndarray(shape, np.dtype(dtype), buffer=self.map, offset=offset)

    def close(self):
        self.map = None
        os.close(self.fd)


class _Channel:
    """Length-prefixed pickled messages over a socket, and the progress counts the other
    side has announced (``counts[stream] = rows``).  Messages of other runs are dropped."""

    def __init__(self, sock):
        self.sock = sock
        self.counts = {}
        self.run = 0

    def send(self, *msg):
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        self.sock.sendall(_HEADER.pack(len(data)) + data)

    def _read(self, n):
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                raise EOFError("the other process closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv(self):
        (n,) = _HEADER.unpack(self._read(_HEADER.size))
        return pickle.loads(self._read(n))

    def take(self):
        """The next message of the current run, or None when it was a progress count
        (recorded in ``counts``) or belongs to another run (dropped)."""
        msg = self.recv()
        if msg[1] != self.run:
            return None
        if msg[0] == "progress":
            self.counts[msg[2]] = msg[3]
            return None
        return msg

    def ready(self, timeout: float = 0) -> bool:
        """Whether a message has arrived (waiting up to ``timeout`` seconds)."""
        import select

        return bool(select.select([self.sock], [], [], timeout)[0])


class _ProcStream:
    """A :class:`nprnn.threads.Stream` between the two processes: the writer announces
    its count, the reader takes messages until the count it needs has come."""

    same_process = False

    def __init__(self, side, sid):
        self.side, self.sid = side, sid

    def publish(self, end):
        self.side.send("progress", self.side.channel.run, self.sid, end)

    def wait(self, end):
        channel = self.side.channel
        while channel.counts.get(self.sid, 0) < end:
            self.side.take()

    def check(self):
        while self.side.channel.ready():
            self.side.take()

    def fail(self, error):
        pass  # the side's error reply (or abort) tells the other process


# ------------------------------------------------------------------------------- the helper
def serve(sock_fd: int, mem_fd: int) -> None:
    """The helper's loop: run jobs until the parent closes the socket."""
    import socket

    side = _HelperSide(_Channel(socket.socket(fileno=sock_fd)), _Shared(mem_fd))
    try:
        _serve(side)
    except (EOFError, OSError):  # the parent is gone
        return


def _serve(side):
    side.channel.send("ready", os.getpid())
    pools = {}  # per module (its token): reusable work arrays, as the module keeps its own
    records = {}  # per module: {layer-direction: the training forward's record}, until its backward
    while True:
        msg = side.channel.recv()
        if msg[0] == "forget":  # modules that are gone
            for token in msg[1]:
                pools.pop(token, None)
                records.pop(token, None)
            continue
        if msg[0] != "run":
            continue  # a late abort or progress of a finished run
        _, run, size, kind_name, batch_sizes, chunk_steps, token, jobs = msg
        threads.CHUNK_STEPS = chunk_steps  # the parent's groups, so that both round alike
        side.channel.run = run
        side.channel.counts = {}
        try:
            side.shared.ensure(size, grow=False)
            pool = pools.setdefault(token, {})
            held = records.setdefault(token, {})
            results = {job["idx"]: _run_job(side, job, kind_name, batch_sizes, pool, held) for job in jobs}
            side.channel.send("done", run, results)
        except Aborted:
            side.channel.send("aborted", run)
        except BaseException as error:  # reported to the parent, which raises it
            try:
                side.channel.send("error", run, error)
            except Exception:  # not picklable
                side.channel.send("error", run, RuntimeError(f"{type(error).__name__}: {error}"))


def _run_job(side, job, kind_name, batch_sizes, pool, held):
    """One layer-direction, forward (its final states; a training forward keeps its record
    in ``held``) or backward of a kept record (its initial-state and parameter gradients)."""
    from .functional import KINDS, direction_backward, direction_forward

    idx, cols = job["idx"], job["cols"]
    pipeline = None
    if job["stream"] is not None:
        source, sink = job["stream"]
        pipeline = (None if source is None else _ProcStream(side, source),
                    None if sink is None else _ProcStream(side, sink))
    if job["op"] == "backward":
        rec = held.pop(idx, None)
        if rec is None:
            raise RuntimeError(f"the helper holds no training forward of layer-direction {idx} to backpropagate")
        dout = side.shared.array(job["dout"])[:, cols[0] : cols[1]]
        dx = side.shared.array(job["dx"])
        _, dstate0, pgrads = direction_backward(rec, dout, job["dstate"], pool, idx, dx, False, pipeline)
        return dstate0, pgrads
    train = job["train"]
    # a record outlives this run's shared memory, so a training forward works on copies
    params = tuple(None if p is None else np.array(side.shared.array(p)) if train else side.shared.array(p)
                   for p in job["params"])
    x = side.shared.array(job["x"])
    out = side.shared.array(job["out"])[:, cols[0] : cols[1]]
    held.pop(idx, None)
    final, rec = direction_forward(KINDS[kind_name], x, params, job["state0"], batch_sizes, job["reverse"], out,
                                   train, job["options"], pool, idx, pipeline)
    if train:
        rec.x = keep_copy(rec.x, pool, (idx, "x kept"))
        held[idx] = rec
    return final


def keep_copy(x, pool, key):
    """``x`` copied into pooled memory (a record's input that lives in shared memory)."""
    from .functional import alloc_blocks

    (kept,) = alloc_blocks(((1, x.shape[1]),), x.shape[0], x.dtype, pool, key)
    np.copyto(kept, x)
    return kept


class _HelperSide:
    def __init__(self, channel, shared):
        self.channel, self.shared = channel, shared
        self.send = channel.send

    def take(self):
        msg = self.channel.take()
        if msg is not None and msg[0] == "abort":
            raise Aborted()


# ------------------------------------------------------------------------------- the parent
class Helper:
    """The parent's handle on a helper process (see :func:`acquire`)."""

    def __init__(self, blas_threads: int):
        import socket
        import subprocess

        self.blas_threads = blas_threads
        self.shared = _Shared()
        parent, child = socket.socketpair()
        self.channel = _Channel(parent)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
            env[var] = str(blas_threads)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", f"from nprnn.helper import serve; serve({child.fileno()}, {self.shared.fd})"],
                pass_fds=(child.fileno(), self.shared.fd), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True)  # Ctrl-C reaches the parent only
        finally:
            child.close()
        self.pid = None  # set by the "ready" message
        self.used = 0  # bytes of shared memory handed out in the current run
        self.reply = None  # the helper's final message of the current run
        self.broken = False  # a message was cut short: replaced before the next run

    @property
    def ready(self) -> bool:
        if self.pid is None and self.channel.ready():
            msg = self.channel.recv()
            if msg[0] != "ready":
                raise HelperFailed(f"unexpected first message from the helper: {msg[0]!r}")
            self.pid = msg[1]
        return self.pid is not None

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self.channel.ready(timeout) or not self.ready:
            raise HelperFailed(f"the helper process did not start within {timeout} s")

    def alive(self) -> bool:
        """Running, with its stream of messages whole."""
        return not self.broken and self.process.poll() is None

    def close(self, kill: bool = False) -> None:
        """Stop the helper: it exits on EOF once it is ready (before that, or with
        ``kill``, it is killed)."""
        self.channel.sock.close()
        if kill or self.pid is None:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except Exception:
            self.process.kill()
            self.process.wait()
        self.shared.close()

    # -- one run ------------------------------------------------------------------
    def begin(self) -> None:
        """A new run: the shared memory is handed out from the start again."""
        self.used = 0

    def empty(self, shape, dtype):
        """A fresh shared array: ``(array, spec)``."""
        dtype = np.dtype(dtype)
        offset = -(-self.used // _ALIGN) * _ALIGN
        self.used = offset + int(np.prod(shape)) * dtype.itemsize
        self.shared.ensure(self.used, grow=True)
        spec = (offset, tuple(shape), dtype.str)
        return self.shared.array(spec), spec

    def share(self, array):
        """A shared copy of ``array``: its spec."""
        view, spec = self.empty(array.shape, array.dtype)
        np.copyto(view, array)
        return spec

    def send(self, *msg):
        try:
            self.channel.send(*msg)
        except OSError as exc:
            self.broken = True
            raise HelperFailed(f"the helper process exited (code {self.process.poll()})") from exc
        except BaseException:  # interrupted part-way: the stream of messages is no longer whole
            self.broken = True
            raise

    def start(self, kind_name, batch_sizes, token, jobs) -> None:
        """Send the helper the jobs of module ``token`` (each a dict of specs and settings;
        see :func:`_run_job`)."""
        self.reply = None
        self.channel.run += 1
        self.channel.counts = {}
        gone = _take_forgotten()
        if gone:
            self.send("forget", gone)
        self.send("run", self.channel.run, self.shared.size, kind_name, list(batch_sizes), threads.CHUNK_STEPS,
                  token, jobs)

    def stream(self, sid):
        return _ProcStream(self, sid)

    def take(self):
        """Handle one message of the current run: a progress count, or the helper's final
        reply (kept in ``reply``; an error reply is raised)."""
        try:
            msg = self.channel.take()
        except (EOFError, OSError) as exc:
            self.broken = True
            raise HelperFailed(f"the helper process exited (code {self.process.poll()})") from exc
        except BaseException:  # interrupted part-way (Ctrl-C): a message may be half read
            self.broken = True
            raise
        if msg is None:
            return
        self.reply = msg
        if msg[0] == "error":
            raise msg[2]

    def finish(self):
        """Wait for the helper's jobs: ``{idx: final states}``."""
        while self.reply is None:
            self.take()
        if self.reply[0] != "done":
            raise HelperFailed(f"unexpected reply from the helper: {self.reply[0]!r}")
        return self.reply[2]

    def abort(self) -> None:
        """Stop the helper's jobs after a failure here, and wait until it has (a helper
        whose messages were cut is left to :func:`acquire` to replace)."""
        if self.reply is None and not self.broken:
            self.send("abort", self.channel.run)
        while self.reply is None and not self.broken:
            try:
                self.take()
            except HelperFailed:
                raise
            except Exception:  # its own error, beside ours
                return


_tokens = itertools.count(1)
_forgotten = []  # tokens of modules gone since the last run (appended by finalizers)


def token_for(module) -> int:
    """A number naming ``module`` to the helper (its work arrays and records there are
    kept under it, and dropped when the module is collected)."""
    token = module.__dict__.get("_helper_token")
    if token is None:
        token = module.__dict__["_helper_token"] = next(_tokens)
        weakref.finalize(module, _forgotten.append, token)
    return token


def forget(module) -> None:
    """Have the helper drop ``module``'s work arrays and records (at its next run)."""
    token = module.__dict__.pop("_helper_token", None)
    if token is not None:
        _forgotten.append(token)


def _take_forgotten():
    gone = []
    while _forgotten:
        gone.append(_forgotten.pop())
    return gone


def acquire(blas_threads: int):
    """The ready helper, locked for this run (``release`` it after), or None: disabled,
    not ready yet (then it is started), or busy with another thread's run."""
    if not _state["enabled"] or not sys.executable or getattr(sys, "frozen", False):
        return None
    if not _lock.acquire(blocking=False):
        return None
    try:
        helper = _state["helper"]
        if helper is not None and (not helper.alive() or helper.blas_threads != blas_threads):
            helper.close(kill=True)  # it may be busy with the rest of a cut-off run
            helper = _state["helper"] = None
        if helper is None:
            helper = _state["helper"] = Helper(blas_threads)
        if helper.ready:
            return helper
    except Exception as exc:  # no helper: runs use threads
        warnings.warn(f"nprnn: could not start the helper process ({exc}); using threads", RuntimeWarning,
                      stacklevel=3)
        _state["enabled"] = False
        _state["helper"] = None
    _lock.release()
    return None


def acquire_same(helper) -> bool:
    """Lock ``helper`` for a run (waiting while another thread uses it); False, unlocked,
    if it is no longer the running helper."""
    _lock.acquire()
    if _state["helper"] is helper and helper.alive():
        return True
    _lock.release()
    return False


def release() -> None:
    _lock.release()


def discard() -> None:
    """Drop a helper that failed (called with the lock held); the next run starts another."""
    helper = _state["helper"]
    _state["helper"] = None
    if helper is not None:
        helper.close(kill=True)


def start(blas_threads: int, timeout: float = 60.0) -> None:
    """Start the helper now and wait until it is ready (the first run would otherwise
    start it in the background and use threads meanwhile)."""
    helper = acquire(blas_threads)
    if helper is None:
        with _lock:
            helper = _state["helper"]
            if helper is None:
                raise HelperFailed("the helper process is disabled or could not start")
            helper.wait_ready(timeout)
    else:
        release()


def shutdown() -> None:
    """Stop the helper process, if any."""
    with _lock:
        helper = _state["helper"]
        _state["helper"] = None
        if helper is not None:
            helper.close()


_forked_off = []  # in a forked child: the parent's helper handles, kept only so they are never collected


def _after_fork_in_child():
    """The parent's helper is the parent's: a forked child closes its copy of the socket
    and starts its own helper if it needs one."""
    global _lock
    _lock = threading.Lock()
    helper = _state["helper"]
    _state["helper"] = None
    if helper is not None:
        helper.channel.sock.close()
        _forked_off.append(helper)


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
