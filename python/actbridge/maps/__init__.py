"""Maps between two models' activation spaces: affine (closed form, from a store in one pass)
and autoencoders (Rust or torch trainers), their on-disk format and loading.

- :mod:`actbridge.maps.affine`: :class:`AffineStats`, :class:`AffineMap`, the BLAS choice.
- :mod:`actbridge.maps.autoencoder`: :class:`AutoencoderMap`.
- :mod:`actbridge.maps.training`: :class:`AutoencoderConfig` and the two trainers.
- :mod:`actbridge.maps.format`: the files of a saved map; :mod:`actbridge.maps.io`: :func:`load_map`.
"""

from actbridge.errors import MapCorruptError, MapError, MapWarning
from actbridge.maps.affine import AffineMap, AffineStats, blas_source, use_fast_blas
from actbridge.maps.autoencoder import AutoencoderMap
from actbridge.maps.format import save_map
from actbridge.maps.io import load_map
from actbridge.maps.training import AutoencoderConfig, default_hidden

__all__ = [
    "AffineMap",
    "AffineStats",
    "AutoencoderConfig",
    "AutoencoderMap",
    "MapCorruptError",
    "MapError",
    "MapWarning",
    "blas_source",
    "default_hidden",
    "load_map",
    "save_map",
    "use_fast_blas",
]
