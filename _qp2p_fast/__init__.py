"""Compiled (Cython) twins of ``qp2p._pure``; import them through ``qp2p._speedups`` only."""
