"""The layers a user builds models with (PyTorch's ``torch.nn`` part): the module base,
the recurrent layers and cells, their layout and packing, the other layers, losses,
optimizers and streaming.  They validate, hold parameters and keep records; the numbers
are computed in :mod:`nprnn.functional`.  Import them from :mod:`nprnn`."""
