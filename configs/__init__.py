"""Training presets for ``avatar train --preset NAME``: one TOML file per preset.

Each file lists only the settings that differ from :class:`avatar.training.TrainConfig`'s defaults
(which document every knob); ``[strategy]`` holds densification settings, ``[hash]`` and
``[points]`` those of the hash-blendshapes and neural-points representations. Copy one, edit it and
pass it with ``avatar train OUT --config my.toml``.
"""
