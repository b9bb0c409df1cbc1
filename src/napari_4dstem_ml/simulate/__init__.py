"""abTEM-based generators of the sample data: ``python -m napari_4dstem_ml.simulate mos2|prsco3 -o FILE``.

abTEM and ASE (extra ``[sim]``) are imported only inside the simulation functions.
"""
