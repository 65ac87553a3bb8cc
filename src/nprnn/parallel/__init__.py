"""Using more than one core (:mod:`.threads`: the runner the kernels are given) and more
than one machine (:mod:`.scale`: process pools and Dask)."""
