"""Maps between two models' activation spaces: affine (closed form, from a store in one pass)
and autoencoders (Rust or torch trainers), their on-disk format and loading.

- :mod:`actbridge.maps.affine`: :class:`AffineStats`, :class:`AffineMap`, the BLAS choice.
- :mod:`actbridge.maps.autoencoder`: :class:`AutoencoderMap`.
- :mod:`actbridge.maps.training`: :class:`AutoencoderConfig` and the two trainers.
- :mod:`actbridge.maps.format`: the files of a saved map; :mod:`actbridge.maps.io`: :func:`load_map`.
- :mod:`actbridge.maps.sites`: :func:`map_sites`, the model, block and hook point of each side.
"""

from actbridge.errors import MapCorruptError, MapError, MapWarning
from actbridge.maps.affine import AffineMap, AffineStats, blas_source, use_fast_blas
from actbridge.maps.autoencoder import AutoencoderMap
from actbridge.maps.format import save_map
from actbridge.maps.io import load_map
from actbridge.maps.sites import MapSites, ReadAt, map_sites
from actbridge.maps.training import AutoencoderConfig, default_hidden

__all__ = [
    "AffineMap",
    "AffineStats",
    "AutoencoderConfig",
    "AutoencoderMap",
    "MapCorruptError",
    "MapError",
    "MapSites",
    "MapWarning",
    "ReadAt",
    "blas_source",
    "default_hidden",
    "load_map",
    "map_sites",
    "save_map",
    "use_fast_blas",
]
