"""A character-level LSTM language model and the training loop behind ``nprnn train``.

The model is Embedding -> LSTM -> Linear; training reads the corpus as ``batch_size``
parallel streams, cuts them into ``seq_len`` windows, and carries the LSTM state from one
window to the next (truncated backpropagation through time: the carried state is a
value, no gradient flows into the previous window).
"""
from __future__ import annotations

import math
import time
from importlib import resources
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..interop.serialization import checkpoint_metadata, load_checkpoint, save_checkpoint
from ..nn.layers import Embedding, Linear
from ..nn.losses import cross_entropy
from ..nn.module import Module, resolve_rng
from ..nn.optim import Adam, clip_grad_norm_
from ..nn.recurrent import LSTM


def default_corpus() -> str:
    """The corpus shipped with the package: the Python Language Reference (PSF License,
    see ``nprnn/data/LICENSE-python-docs.txt``)."""
    return resources.files("nprnn").joinpath("data/python_reference.txt").read_text(encoding="utf-8")


class CharLM(Module):
    """Embedding(V, E) -> LSTM(E, H, num_layers) -> Linear(H, V), time-major.

    ``logits, state = model(ids, state)`` with ids (L, N) integers and logits (L, N, V);
    ``model.backward(grad_logits)`` fills ``model.grads``.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 32, hidden_size: int = 256, num_layers: int = 1,
                 dropout: float = 0.0, weight_drop: float = 0.0, *, recurrent_dropout: float = 0.0,
                 dtype: Any = np.float32, seed: Any = None) -> None:
        super().__init__()
        rng = resolve_rng(seed)
        self.config = dict(vocab_size=vocab_size, embed_dim=embed_dim, hidden_size=hidden_size,
                           num_layers=num_layers, dropout=dropout, weight_drop=weight_drop,
                           recurrent_dropout=recurrent_dropout)
        self.embed = Embedding(vocab_size, embed_dim, dtype=dtype, seed=rng)
        self.lstm = LSTM(embed_dim, hidden_size, num_layers, dropout=dropout, weight_drop=weight_drop,
                         recurrent_dropout=recurrent_dropout, dtype=dtype, seed=rng)
        self.head = Linear(hidden_size, vocab_size, dtype=dtype, seed=rng)

    def forward(self, ids: Any, state: Any = None) -> tuple[np.ndarray, Any]:
        x = self.embed(ids)  # (L, N, E)
        h, state = self.lstm(x, state)  # (L, N, H)
        return self.head(h), state  # (L, N, V)

    def backward(self, grad_logits: np.ndarray) -> None:
        grad_h = self.head.backward(grad_logits)
        grad_x, _ = self.lstm.backward(grad_h)  # the carried-in state gets no gradient
        self.embed.backward(grad_x)


class Vocab:
    """Characters <-> integer ids."""

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> np.ndarray:
        missing = sorted({ch for ch in s if ch not in self.index})
        if missing:
            raise ValueError(f"characters not in the vocabulary: {missing[:10]}")
        return np.fromiter((self.index[ch] for ch in s), dtype=np.int64, count=len(s))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class CharData:
    """The text as integer ids, a train/validation split, and batches of parallel streams."""

    def __init__(self, text: str, val_fraction: float = 0.1) -> None:
        if len(text) < 100:
            raise ValueError(f"the training text is too short ({len(text)} characters; at least 100 needed)")
        self.vocab = Vocab(sorted(set(text)))
        ids = self.vocab.encode(text)
        n_val = max(int(len(ids) * val_fraction), 2)
        self.train_ids, self.val_ids = ids[:-n_val], ids[-n_val:]

    @staticmethod
    def streams(ids: np.ndarray, batch_size: int) -> np.ndarray:
        """(batch_size, T) parallel streams cut from ``ids``."""
        T = len(ids) // batch_size
        if T < 2:
            raise ValueError(f"{len(ids)} characters are too few for {batch_size} parallel streams")
        return ids[: batch_size * T].reshape(batch_size, T)

    @staticmethod
    def window(streams: np.ndarray, k: int, seq_len: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Window ``k`` (wrapping around): inputs and next-character targets, (L, N) each,
        and whether it starts a new pass (the carried state must be reset)."""
        per_pass = (streams.shape[1] - 1) // seq_len
        if per_pass < 1:
            raise ValueError(f"the streams are shorter than seq_len={seq_len}")
        j = k % per_pass
        x = streams[:, j * seq_len : (j + 1) * seq_len]
        y = streams[:, j * seq_len + 1 : (j + 1) * seq_len + 1]
        return np.ascontiguousarray(x.T), np.ascontiguousarray(y.T), j == 0


def unigram_baseline(data: CharData) -> float:
    """Cross-entropy (nats per character) of the validation text under the training
    text's character frequencies (add-one smoothed): what a model with no context gets."""
    counts = np.bincount(data.train_ids, minlength=len(data.vocab)) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[data.val_ids].mean())


def evaluate(model: CharLM, data: CharData, batch_size: int, seq_len: int) -> float:
    """Mean cross-entropy (nats per character) over the validation split, state carried."""
    was_training = model.training
    model.eval()
    n = min(batch_size, max(1, (len(data.val_ids) - 1) // (seq_len + 1)))
    streams = CharData.streams(data.val_ids, n)
    state, total, count = None, 0.0, 0
    for k in range((streams.shape[1] - 1) // seq_len):
        x, y, _ = CharData.window(streams, k, seq_len)
        logits, state = model(x, state)
        loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        total += float(loss)
        count += y.size
    model.train(was_training)
    return total / count


def generate(model: CharLM, vocab: Vocab, prompt: str, length: int, temperature: float = 0.8, rng: Any = None
             ) -> Iterator[str]:
    """Yield ``length`` characters continuing ``prompt``, each as soon as it is drawn."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    rng = resolve_rng(rng)
    was_training = model.training
    model.eval()
    try:
        ids = vocab.encode(prompt) if prompt else np.array([vocab.index.get("\n", 0)])
        logits, state = model(ids[:, None], None)
        for _ in range(length):
            z = logits[-1, 0].astype(np.float64) / temperature
            p = np.exp(z - z.max())
            nxt = int(rng.choice(len(p), p=p / p.sum()))
            yield vocab.chars[nxt]
            logits, state = model(np.array([[nxt]]), state)
    finally:
        model.train(was_training)


def sample(model: CharLM, vocab: Vocab, prompt: str, length: int, temperature: float = 0.8, rng: Any = None
           ) -> str:
    """``prompt`` continued by ``length`` characters drawn from the model (see :func:`generate`)."""
    return prompt + "".join(generate(model, vocab, prompt, length, temperature, rng))


class _Progress:
    """tqdm when it is installed, else a line every ``every`` steps."""

    def __init__(self, total: int, initial: int, enabled: bool, log: Callable[[str], Any]) -> None:
        self.bar: Any = None
        self.log = log
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, step: int, loss: float, chars_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", chars_s=f"{chars_per_s:,.0f}", refresh=False)
            self.bar.update(1)
        elif self.enabled and step % 50 == 0:
            self.log(f"step {step}: loss {loss:.3f}, {chars_per_s:,.0f} chars/s")

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            self.log(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(text: str | None = None, *, steps: int = 600, batch_size: int = 32, seq_len: int = 64,
          hidden_size: int = 256, num_layers: int = 1, embed_dim: int = 32, dropout: float = 0.0,
          weight_drop: float = 0.0, recurrent_dropout: float = 0.0, lr: float = 3e-3, clip: float = 1.0,
          eval_every: int = 100,
          checkpoint: str | None = None, ckpt_every: int = 200, resume: bool = False, seed: int = 0,
          plot: str | None = None, sample_len: int = 200, prompt: str | None = None, progress: bool = True,
          log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train a :class:`CharLM` and return its history; see ``nprnn train --help``."""
    if resume and not checkpoint:
        raise ValueError("--resume needs --checkpoint PATH")
    text = default_corpus() if text is None else text
    data = CharData(text)
    model = CharLM(len(data.vocab), embed_dim, hidden_size, num_layers, dropout, weight_drop,
                   recurrent_dropout=recurrent_dropout, seed=seed)
    opt = Adam(model, lr=lr)
    streams = CharData.streams(data.train_ids, batch_size)
    state = None
    start = 0
    history: dict[str, list[float]] = {"step": [], "loss": [], "val_step": [], "val_loss": []}
    if resume:
        assert checkpoint  # (refused above without one)
        info = load_checkpoint(checkpoint, model, opt)
        extra = info["extra"]
        if extra.get("vocab") != data.vocab.chars:
            raise ValueError(f"{checkpoint} was trained on another vocabulary; use the same --text to resume")
        start = info["step"]
        history = extra.get("history", history)
        arrays = info["arrays"]
        if "h" in arrays:
            state = (arrays["h"], arrays["c"])
        log(f"resumed from {checkpoint} at step {start}")
    baseline = unigram_baseline(data)
    log(f"corpus: {len(data.train_ids):,} training and {len(data.val_ids):,} validation characters, "
        f"vocabulary {len(data.vocab)}")
    log(f"model: {model.lstm!r}, {sum(p.size for p in model.parameters()):,} parameters")
    log(f"unigram baseline (validation, nats/char): {baseline:.3f}")

    def save(step: int) -> None:
        assert checkpoint  # (saving only with one)
        arrays = {} if state is None else {"h": state[0], "c": state[1]}
        save_checkpoint(checkpoint, model, opt, step=step, extra={
            "vocab": data.vocab.chars, "config": model.config, "history": history}, arrays=arrays)

    bar = _Progress(steps, start, progress, log)
    t_start = time.perf_counter()
    for step in range(start + 1, steps + 1):
        t0 = time.perf_counter()
        x, y, new_pass = CharData.window(streams, step - 1, seq_len)
        if new_pass:
            state = None
        logits, state = model(x, state)
        loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        model.backward(loss.backward().reshape(logits.shape))
        clip_grad_norm_(model, clip)
        opt.step()
        history["step"].append(step)
        history["loss"].append(float(loss))
        bar.update(step, float(loss), x.size / (time.perf_counter() - t0))
        if step % eval_every == 0 or step == steps:
            val = evaluate(model, data, batch_size, seq_len)
            history["val_step"].append(step)
            history["val_loss"].append(val)
            bar.write(f"step {step}: train loss {float(loss):.3f}, validation loss {val:.3f} "
                      f"(unigram baseline {baseline:.3f}) nats/char")
        if checkpoint and (step % ckpt_every == 0 or step == steps):
            save(step)
    bar.close()
    elapsed = time.perf_counter() - t_start
    done = steps - start
    result = {"history": history, "baseline": baseline, "model": model, "data": data,
              "steps_per_s": done / elapsed if done else float("nan")}
    if done:
        log(f"{done} steps in {elapsed:.1f} s: {done / elapsed:.2f} steps/s")
    if history["val_loss"]:
        log(f"final validation loss {history['val_loss'][-1]:.3f} nats/char "
            f"({history['val_loss'][-1] / math.log(2):.3f} bits) vs unigram baseline {baseline:.3f}")
    if sample_len:
        if prompt is None:  # "The " when the corpus has those letters, else its own opening
            prompt = "The " if set("The ") <= set(data.vocab.chars) else data.vocab.decode(data.train_ids[:4])
        log("sample: " + repr(sample(model, data.vocab, prompt, sample_len, rng=seed)))
    if plot:
        plot_history(history, baseline, plot)
        log(f"loss curve written to {plot}")
    return result


def plot_history(history: dict[str, list[float]], baseline: float, path: str) -> None:
    """Loss curve PNG (matplotlib, an optional dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install 'nprnn[plot]'") from exc
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps, loss = np.array(history["step"]), np.array(history["loss"])
    if len(loss):
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps, loss, color="0.8", lw=0.8, label="training loss")
        ax.plot(steps[k - 1:], smooth, color="C0", lw=1.5, label=f"training loss ({k}-step mean)")
    ax.plot(history["val_step"], history["val_loss"], "o-", color="C1", label="validation loss")
    ax.axhline(baseline, color="C3", ls="--", label="unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / character)")
    ax.legend()
    ax.grid(alpha=0.3)
    from .diagram import _save

    _save(fig, path)  # closes the figure


def load_for_generation(path: str) -> tuple[CharLM, Vocab]:
    """``(model, vocab)`` from a checkpoint written by :func:`train`."""
    meta = checkpoint_metadata(path)
    try:
        config, chars = meta["extra"]["config"], meta["extra"]["vocab"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a checkpoint written by `nprnn train`") from exc
    model = CharLM(**config)
    load_checkpoint(path, model)
    return model, Vocab(chars)
