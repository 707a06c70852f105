"""Weft: live stream recording over HTTP."""
