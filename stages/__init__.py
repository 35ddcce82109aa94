"""Pipeline stages: pure functions on torch modules plus thin adapters run(artifact, ctx)."""
