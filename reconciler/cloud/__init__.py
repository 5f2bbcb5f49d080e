"""The CVM API 2.0 client: request signing, the httpx client, observing live state."""
