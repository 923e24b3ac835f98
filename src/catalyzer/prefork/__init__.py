"""``--procs N``: the master (supervising only), its worker entry point
(``python -m catalyzer.prefork.worker``), the code reloader and ``control``, the whole
master/worker contract.

Services and edges. Imports :mod:`catalyzer.server`, :mod:`catalyzer.process`, :mod:`catalyzer.ops`
and the layers below; never :mod:`catalyzer.dispatch`.
"""
