"""Variable-length batches: nprnn (lengths= and packed) against PyTorch's packed path.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_varlen.py [--threads 2]

32 sequences with lengths drawn uniformly from 50..100 (seeded), H_in=64, H=128, 2 layers,
LSTM and GRU, inference and one training step (forward + backward).  Prints medians and
the ratio PyTorch time / nprnn time (> 1: nprnn is faster).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import paired_times, setup  # noqa: E402


def main():
    args, torch = setup(lambda ap: ap.add_argument("--kinds", default="LSTM,GRU"), min_time=2.0)
    import torch.nn.utils.rnn as tr

    import nprnn

    N, H_in, H, layers = 32, 64, 128, 2
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 101, size=N)
    L = int(lengths.max())
    x = rng.standard_normal((L, N, H_in)).astype(np.float32)
    g = np.ones((L, N, H), np.float32)
    print(f"N={N} lengths {lengths.min()}..{lengths.max()} (sum {lengths.sum()}), H_in={H_in} H={H} layers={layers}")
    print(f"{'case':34s} {'torch packed ms':>16s} {'nprnn ms':>10s} {'torch/nprnn':>12s}")
    for kind in args.kinds.split(","):
        ours = getattr(nprnn, kind)(H_in, H, num_layers=layers, seed=0)
        theirs = getattr(torch.nn, kind)(H_in, H, num_layers=layers)
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
        xt = torch.from_numpy(x)
        lt = torch.from_numpy(lengths)
        gt = torch.from_numpy(g)

        def torch_infer():
            with torch.no_grad():
                out, _ = theirs(tr.pack_padded_sequence(xt, lt, enforce_sorted=False))
                tr.pad_packed_sequence(out)

        def torch_train():
            theirs.zero_grad(set_to_none=False)
            out, _ = theirs(tr.pack_padded_sequence(xt, lt, enforce_sorted=False))
            padded, _ = tr.pad_packed_sequence(out)
            padded.backward(gt[: padded.shape[0]])

        def np_lengths_infer():
            ours.eval()
            ours(x, lengths=lengths)

        def np_lengths_train():
            ours.train()
            ours(x, lengths=lengths)
            ours.backward(g, input_grad=False)  # (x requires no gradient, as on the PyTorch side)

        def np_packed_infer():  # pack, run, unpack: the same work as the PyTorch side
            ours.eval()
            out, _ = ours(nprnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
            nprnn.pad_packed_sequence(out)

        def np_packed_train():  # pack, run, unpack, and the same for the gradient
            ours.train()
            out, _ = ours(nprnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
            nprnn.pad_packed_sequence(out)
            ours.backward(nprnn.pack_padded_sequence(g, lengths, enforce_sorted=False))

        for name, fn, ref_fn in (("inference, lengths=", np_lengths_infer, torch_infer),
                                 ("inference, packed", np_packed_infer, torch_infer),
                                 ("train step, lengths=", np_lengths_train, torch_train),
                                 ("train step, packed", np_packed_train, torch_train)):
            ref, tn = paired_times(ref_fn, fn, args.min_time)
            print(f"{kind + ' ' + name:34s} {ref * 1e3:16.2f} {tn * 1e3:10.2f} {ref / tn:12.2f}", flush=True)


if __name__ == "__main__":
    main()
