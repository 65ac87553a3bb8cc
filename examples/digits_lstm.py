"""A sequence classifier on real data: scikit-learn's handwritten digits (8x8 images, shipped
with scikit-learn), each image read row by row as a sequence of 8 steps with 8 features.

    pip install scikit-learn && python examples/digits_lstm.py      # a few seconds
"""
import numpy as np

import nprnn
from nprnn.layers import Linear
from nprnn.losses import cross_entropy
from nprnn.optim import Adam


class RowReader(nprnn.Module):
    """LSTM over the rows; the last hidden state goes to a linear classifier."""

    def __init__(self, hidden_size=64, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.lstm = nprnn.LSTM(8, hidden_size, batch_first=True, seed=rng)
        self.head = Linear(hidden_size, 10, seed=rng)

    def forward(self, images):  # (N, 8, 8): batch, rows (time), pixels (features)
        out, (h_n, c_n) = self.lstm(images)
        self._out_shape = out.shape
        return self.head(h_n[-1])  # (N, 10)

    def backward(self, grad_logits):
        grad_h = self.head.backward(grad_logits)
        # only h_n was used: the output gradient is zero, the h_n gradient carries everything
        self.lstm.backward(np.zeros(self._out_shape, np.float32), (grad_h[None], None))


def main(epochs=15, batch_size=64, seed=0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    y = digits.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    test, train = order[:360], order[360:]
    model = RowReader(seed=seed)
    opt = Adam(model, lr=1e-2)
    for epoch in range(epochs):
        rng.shuffle(train)
        model.train()
        for i in range(0, len(train), batch_size):
            idx = train[i : i + batch_size]
            loss = cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            model.backward(loss.backward())
            opt.step()
        model.eval()
        acc = (model(x[test]).argmax(axis=1) == y[test]).mean()
        print(f"epoch {epoch + 1:2d}  last batch loss {float(loss):.3f}  held-out accuracy {acc:.3f}")
    return acc


if __name__ == "__main__":
    main()
