"""Small shared helpers: cache folder, atomic writes."""
from avatar.utils.files import atomic_path, atomic_write, cache_dir

__all__ = ["atomic_path", "atomic_write", "cache_dir"]
