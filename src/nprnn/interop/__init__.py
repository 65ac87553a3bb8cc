"""Moving models in and out: nprnn's own files and checkpoints (:mod:`.serialization`),
PyTorch's ``.pt`` files read without PyTorch (:mod:`.torchfile`), ONNX both ways
(:mod:`.onnx`) and the ``nprnn convert`` command (:mod:`.convert`)."""
