"""The public tracking API resolves to functions, whatever was imported before."""
import avatar
import avatar.fitting


def test_track_is_the_function_not_a_module():
    import avatar.fitting.pipeline  # noqa: F401 - importing the implementation must not shadow the API

    assert callable(avatar.track) and avatar.track.__name__ == "track"
    assert callable(avatar.fitting.track) and callable(avatar.load_tracking)
