"""Training and evaluation scripts of the bundled small prior (not part of the installed package)."""
