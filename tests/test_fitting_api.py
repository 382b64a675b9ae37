"""The public tracking API resolves to functions, whatever was imported before."""
import avatar
import avatar.fitting


def test_track_is_the_function_not_a_module():
    import avatar.fitting.pipeline  # noqa: F401 - importing the implementation must not shadow the API

    assert callable(avatar.track) and avatar.track.__name__ == "track"
    assert callable(avatar.fitting.track) and callable(avatar.load_tracking)


def test_every_exported_name_resolves():
    """Each name of avatar.fitting.__all__ (the online tracker's included) imports and is the object
    its module defines."""
    import importlib

    for name in avatar.fitting.__all__:
        obj = getattr(avatar.fitting, name)
        assert getattr(importlib.import_module(obj.__module__), name) is obj
    assert "OnlineTracker" in avatar.fitting.__all__
