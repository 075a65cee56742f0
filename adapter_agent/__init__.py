"""`ftserve adapter-agent`: the small process beside each vLLM server of a split deployment (docs/deploy.md)."""
