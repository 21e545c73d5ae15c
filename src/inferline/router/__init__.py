"""The router: one `Generator` over many targets (local engines, remote upstreams)."""

__all__: list[str] = []
