"""The Textual app: the only place in ipo_tui that imports Textual."""
