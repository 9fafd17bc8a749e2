# cython: language_level=3
"""The compiled models of a sized object and a mutable container (``Sized`` and ``Box``): the
objects the vetting pass makes most, one per container a pickle builds. The same attributes as
the pure-Python classes of `streampickle._policy.model` (which documents them) and the same
behaviour, as C fields: the accelerator (`streampickle._policy._scan`) reads and writes them
without attribute lookups. `model` uses these where they are built, its own classes where not
(or with ``STREAMPICKLE_PURE_PYTHON=1``). ``cost`` and ``depth`` are C sizes: the model caps
a cost at ``COST_CAP`` (2**62) and a depth at max_nesting before it stores either."""


cdef class Sized:
    """The model of an object whose length is known (`streampickle._policy.model.Sized`)."""

    def __init__(self, size):
        self.size = size


cdef class Box(Sized):
    """The model of a mutable container (`streampickle._policy.model.Box`)."""

    def __init__(self, size):
        self.size = size
        self.depth = 1
        self.cost = 1
        self.holders = ()  # nodes.NO_HOLDERS
        self.built = False
        self.hashes = None
        self.listed = False
        self.loose = 0
