"""ipo-tui: Implicit Preference Optimization in the terminal."""

__version__ = "0.1.0"
