"""quorum-signer's proxy: the command line now; the aiohttp app, auth and node pool to come."""
