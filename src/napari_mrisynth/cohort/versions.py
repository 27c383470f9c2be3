"""Cohort versions (no imports, so that the CLI can list them without NumPy or SciPy).

1. One template under a smooth deformation.
2. Every head has its own fine folding, cortical thickness and texture
   (:mod:`.fine_anatomy`).
3. A seed gives the same anatomy at every output spacing up to 2 mm: the subject
   deformation's control grid is fixed in template space and 2 mm output is sampled from
   the 1 mm head model (:mod:`.deformation`, :func:`.simulate.model_spacing`). At 1 mm it
   equals version 2 voxel for voxel.

The same seed and version always give the same cohort.
"""

#: The cohort version new subjects get.
COHORT_VERSION = 3
#: Every version this code reproduces.
COHORT_VERSIONS = (1, 2, 3)
