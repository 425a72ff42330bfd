"""Wire formats: SSE, JSON on the hot path, metering of streams, Anthropic <-> OpenAI translation."""
