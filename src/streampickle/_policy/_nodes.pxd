# The compiled models of `streampickle._policy.model.Sized` and `Box`: C fields that the
# accelerator (`_scan.pyx`) reads and writes directly, the same attributes for Python code.

cdef class Sized:
    cdef public object size


cdef class Box(Sized):
    cdef public bint built
    cdef public Py_ssize_t cost
    cdef public Py_ssize_t depth
    cdef public dict hashes
    cdef public object holders
    cdef public bint listed
    cdef public Py_ssize_t loose
