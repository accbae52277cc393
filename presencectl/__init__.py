"""presencectl: keep presence in step between Microsoft Teams and Univerge Blue Connect."""

__version__ = "0.1.0"
