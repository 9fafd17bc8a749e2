# The compiled models of `streampickle._policy.model.Sized` and `Box`: C fields that the
# accelerator (`_scan.pyx`) reads and writes directly, the same attributes for Python code.

cdef class Sized:
    cdef public object size


cdef class Box(Sized):
    # built, listed and loose share one 8-byte slot: a Box stays 80 bytes (pymalloc's class).
    cdef public unsigned char built
    cdef public unsigned char listed
    cdef public int loose  # at most keys.LOOSE_CAP
    cdef public Py_ssize_t cost
    cdef public Py_ssize_t depth
    cdef public dict hashes
    cdef public object holders
