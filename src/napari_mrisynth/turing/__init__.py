"""Visual Turing tests: blinded reader studies of real vs synthetic volumes.

* :mod:`.design` freezes a study (volumes, trial items, the seeded order per rater);
* :mod:`.prepare` brings every volume onto one study grid with one intensity mapping, so
  that nothing but the anatomy tells real from synthetic;
* :mod:`.store` keeps the study and every rating in SQLite (WAL) or a server database;
* :mod:`.session` is what a rater's viewer talks to: one trial at a time, nothing else;
* :mod:`.statistics` and :mod:`.report` read the store; :mod:`.curation` approves volumes
  for :mod:`napari_mrisynth.export`.
"""
