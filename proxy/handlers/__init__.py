"""The methods the proxy answers itself (CONTRACT 4.1)."""
