"""abTEM-based simulation of 4D-STEM data with exact ground truth (optional extra ``[sim]``).

- :mod:`.structures`: named materials, structure files (CIF, any ASE format), zone axes,
  point defects (:class:`~.structures.StructureSpec`, :class:`~.structures.Defect`).
- :mod:`.scene`: :class:`~.scene.SimulationConfig` (frozen, JSON) and its plan / cost
  (:func:`~.scene.estimate_seconds`).
- :mod:`.engine`: :func:`~.engine.simulate` (a generator of progress events; resumable,
  cancellable) writing one HDF5 file.
- :mod:`.series`: :func:`~.series.simulate_series` (ranges of thickness, defocus, dose, tilt,
  energy ... for ``stemml simulate-train``).
- :mod:`.items`: :func:`~.items.read_item` and :func:`~.items.redraw_counts` for training.
- :mod:`.suites`: the held-out transfer suite and the training library.
- ``mos2.py``, ``prsco3.py``: the bundled sample generators
  (``python -m napari_4dstem_ml.simulate mos2|prsco3 -o FILE``).

abTEM and ASE are imported only inside functions.
"""
