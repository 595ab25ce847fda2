"""The dev tools' command groups: ``javia demo`` and ``javia simulate``."""
