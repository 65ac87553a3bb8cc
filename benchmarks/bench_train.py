"""Training steps per second of the `nprnn train` default model, nprnn against PyTorch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train.py [--threads 2]

Both run the same step: Embedding(94, 32) -> LSTM(32, 256) -> Linear(256, 94) on a batch of
32 windows of 64 characters, cross-entropy, backward, gradient clipping at 1.0, Adam.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import paired_times, setup  # noqa: E402


def main():
    args, torch = setup(None, min_time=5.0)
    from nprnn.charlm import CharData, CharLM, default_corpus
    from nprnn.losses import cross_entropy
    from nprnn.optim import Adam, clip_grad_norm_

    data = CharData(default_corpus())
    V = len(data.vocab)
    model = CharLM(V, 32, 256, 1, seed=0)

    class TorchCharLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(V, 32)
            self.lstm = torch.nn.LSTM(32, 256)
            self.head = torch.nn.Linear(256, V)

        def forward(self, ids, state=None):
            h, state = self.lstm(self.embed(ids), state)
            return self.head(h), state

    tmodel = TorchCharLM()
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    opt, topt = Adam(model, lr=3e-3), torch.optim.Adam(tmodel.parameters(), lr=3e-3)
    streams = CharData.streams(data.train_ids, 32)
    box = {"k": 0, "tk": 0, "state": None, "tstate": None}

    def ours():
        x, y, new = CharData.window(streams, box["k"], 64)
        box["k"] += 1
        logits, box["state"] = model(x, None if new else box["state"])
        loss = cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        model.backward(loss.backward().reshape(logits.shape))
        clip_grad_norm_(model, 1.0)
        opt.step()

    def theirs():
        x, y, new = CharData.window(streams, box["tk"], 64)
        box["tk"] += 1
        logits, state = tmodel(torch.from_numpy(x), None if new else box["tstate"])
        box["tstate"] = tuple(s.detach() for s in state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y.reshape(-1)))
        topt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
        topt.step()

    tt, tn = paired_times(theirs, ours, args.min_time)
    print(f"char-LM training step: torch {1 / tt:.2f} steps/s ({tt * 1e3:.1f} ms), "
          f"nprnn {1 / tn:.2f} steps/s ({tn * 1e3:.1f} ms), torch time / nprnn time = {tt / tn:.2f}")


if __name__ == "__main__":
    main()
