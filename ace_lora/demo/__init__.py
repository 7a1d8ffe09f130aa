"""The demo generator: synthetic data sets in each data set's distributed raw layout (docs/method.md#data-sets),
used by ``fetch`` with ``data.source: demo`` and by the tests.

:func:`write_fixture` writes one data set of the registry (:mod:`ace_lora.registry`) into a raw folder, a pure
function of :class:`~ace_lora.config.DemoConfig`. The package's modules:

- :mod:`~ace_lora.demo.writers`: the seven data set writers (tables, folders, file names) and their CSV, gzip,
  image and SIIM run-length helpers;
- :mod:`~ace_lora.demo.painters`: chest radiographs with findings drawn as local patterns, histopathology tiles;
- :mod:`~ace_lora.demo.reports`: MIMIC-style report prose and the labels it implies;
- :mod:`~ace_lora.demo.dicom`: the DICOM writer of RSNA and SIIM (several encodings);
- :mod:`~ace_lora.demo.vocab`: the tiny preset's vocabulary derived from the demo texts (imported on its own: it
  needs the tokenizer module, which the data stages do not).
"""

from __future__ import annotations

from ace_lora.demo.writers import FIXTURE_VERSION, TEST_FRACTION, encode_rle, images_per_class, write_fixture

__all__ = ["FIXTURE_VERSION", "TEST_FRACTION", "encode_rle", "images_per_class", "write_fixture"]
