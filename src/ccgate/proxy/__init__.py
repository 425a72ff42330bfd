"""The proxy core shared by the sidecar and the gateway: its seams, the engine, the upstream session."""
