"""Exporters: write a file for a runtime, then validate it by running it in that runtime."""
