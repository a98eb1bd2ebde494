"""Pure-Python twins of the ``_qp2p_fast`` modules: the reference implementation.

Each module here has the same name, ``__all__``, signatures, results and exception classes
as its compiled twin; ``qp2p._speedups`` picks one set or the other, never a mix.
"""
