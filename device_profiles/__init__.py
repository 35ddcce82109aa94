"""Shipped device profiles (TOML). Found with importlib.resources, so they work from a wheel too."""
