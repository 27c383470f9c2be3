"""``python -m napari_mrisynth.cli``: the same as the ``mrisynth`` command."""

import sys

from napari_mrisynth.cli import main

sys.exit(main())
