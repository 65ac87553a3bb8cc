"""A character language model on MinGRU (issue 29), beside the same model on an LSTM: the
same data, optimiser and wall-clock budget, the validation loss over time, and a plot.

    python examples/mingru_lm.py [--seconds 60] [--plot docs/mingru_vs_lstm.png]

MinGRU's gates read the input alone, so its whole sequence is one matrix product and a
linear scan; it takes more steps per second, and a stack of two gets the context one LSTM
layer has in its recurrent weights.
"""
import argparse
import time

import numpy as np

import nprnn
from nprnn.charlm import CharData, default_corpus
from nprnn.layers import Embedding, Linear
from nprnn.losses import cross_entropy
from nprnn.optim import Adam, clip_grad_norm_


class CharModel(nprnn.Module):
    """ids (L, N) -> Embedding -> recurrent layer(s) -> Linear -> logits (L, N, V)."""

    def __init__(self, vocab_size, rnn, embed_dim=32, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.embed = Embedding(vocab_size, embed_dim, seed=rng)
        self.rnn = rnn
        self.head = Linear(rnn.hidden_size, vocab_size, seed=rng)

    def forward(self, ids, state=None):
        h, state = self.rnn(self.embed(ids), state)
        return self.head(h), state

    def backward(self, grad_logits):
        grad_x, _ = self.rnn.backward(self.head.backward(grad_logits))
        self.embed.backward(grad_x)


def validation_loss(model, data, seq_len=128):
    model.eval()
    streams = CharData.streams(data.val_ids, 8)
    state, total, count = None, 0.0, 0
    for k in range((streams.shape[1] - 1) // seq_len):
        x, y, _ = CharData.window(streams, k, seq_len)
        logits, state = model(x, state)
        total += float(cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
        count += y.size
    model.train()
    return total / count


def train(model, data, seconds, batch_size=32, seq_len=128, eval_every=25, min_steps=0):
    """Train for ``seconds`` of wall time (evaluation excluded), and at least ``min_steps``
    steps; returns [(seconds, step, val loss)]."""
    opt = Adam(model, lr=3e-3)
    streams = CharData.streams(data.train_ids, batch_size)
    state, spent, step, history = None, 0.0, 0, []
    while spent < seconds or step < min_steps:
        t0 = time.perf_counter()
        x, y, new_pass = CharData.window(streams, step, seq_len)
        if new_pass:
            state = None
        logits, state = model(x, state)
        loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        model.backward(loss.backward().reshape(logits.shape))
        clip_grad_norm_(model, 1.0)
        opt.step()
        spent += time.perf_counter() - t0
        step += 1
        if step % eval_every == 0:
            history.append((spent, step, validation_loss(model, data)))
    history.append((spent, step, validation_loss(model, data)))
    return history


def main(seconds=60.0, plot=None, min_steps=0):
    data = CharData(default_corpus())
    V = len(data.vocab)
    runs = {
        "MinGRU, 2 layers of 256": CharModel(V, nprnn.MinGRU(32, 256, num_layers=2, seed=0)),
        "LSTM, 1 layer of 256": CharModel(V, nprnn.LSTM(32, 256, seed=0)),
    }
    results = {}
    for name, model in runs.items():
        results[name] = train(model, data, seconds, min_steps=min_steps)
        spent, steps, val = results[name][-1]
        params = sum(p.size for p in model.parameters())
        print(f"{name}: {params:,} parameters, {steps} steps in {spent:.0f} s, validation loss {val:.3f} nats/char")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for name, hist in results.items():
            ax.plot([h[0] for h in hist], [h[2] for h in hist], marker=".", label=name)
        ax.set_xlabel("training time, s (2 cores)")
        ax.set_ylabel("validation loss, nats/char")
        ax.set_title("character model on the shipped corpus, same data and wall time")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot)
        print(f"plot written to {plot}")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="training time per model")
    ap.add_argument("--plot", default=None, help="write the validation curves to this PNG")
    args = ap.parse_args()
    main(args.seconds, args.plot)
