"""``torch.nn.utils.rnn`` for nprnn: the packed-sequence API (defined in :mod:`nprnn.packing`)."""
from ..nn.packing import (
    PackedSequence,
    invert_permutation,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
    unpack_sequence,
    unpad_sequence,
)

__all__ = [
    "PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence", "unpad_sequence",
    "pack_sequence", "unpack_sequence", "invert_permutation",
]
