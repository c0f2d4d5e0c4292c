"""Registries: image references, platforms, and the OCI distribution client (hosts.toml
mirrors, auth challenges, manifest resolution, blob fetch) shared by prewarm, the fast pull
and the model cache."""
