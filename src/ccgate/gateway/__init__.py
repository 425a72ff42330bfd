"""The org gateway: the same proxy core behind virtual keys, with the org's budgets, routing and provider keys.

Never imports `ccgate.sidecar` (and the sidecar never imports this package); both stand on the proxy core.
"""
