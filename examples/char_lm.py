"""A character-level language model, written out: the model with its forward and backward,
and the training loop.  (`nprnn train` is the same thing with checkpoints and a progress bar.)

    python examples/char_lm.py            # about a minute on 2 cores
"""
import numpy as np

import nprnn
from nprnn.charlm import CharData, default_corpus, sample
from nprnn.layers import Embedding, Linear
from nprnn.losses import cross_entropy
from nprnn.optim import Adam, clip_grad_norm_


class CharModel(nprnn.Module):
    """ids (L, N) -> Embedding -> LSTM -> Linear -> logits (L, N, V)."""

    def __init__(self, vocab_size, embed_dim=32, hidden_size=192, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.embed = Embedding(vocab_size, embed_dim, seed=rng)
        self.lstm = nprnn.LSTM(embed_dim, hidden_size, seed=rng)
        self.head = Linear(hidden_size, vocab_size, seed=rng)

    def forward(self, ids, state=None):
        x = self.embed(ids)  # (L, N, E)
        h, state = self.lstm(x, state)  # (L, N, H); state = (h_n, c_n)
        return self.head(h), state

    def backward(self, grad_logits):
        # undo forward in reverse order; each layer adds its parameter gradients to .grads
        grad_h = self.head.backward(grad_logits)
        grad_x, _ = self.lstm.backward(grad_h)
        self.embed.backward(grad_x)


def main(steps=400, batch_size=32, seq_len=64):
    data = CharData(default_corpus())
    model = CharModel(len(data.vocab))
    opt = Adam(model, lr=3e-3)
    streams = CharData.streams(data.train_ids, batch_size)  # (N, T) parallel streams of ids
    state = None
    for step in range(steps):
        x, y, new_pass = CharData.window(streams, step, seq_len)  # (L, N) inputs and next characters
        if new_pass:
            state = None
        logits, state = model(x, state)  # the state is carried to the next window as a value
        loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        model.backward(loss.backward().reshape(logits.shape))
        clip_grad_norm_(model, 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {float(loss):.3f} nats/char")
    print(sample(model, data.vocab, "The ", 200, rng=0))


if __name__ == "__main__":
    main()
