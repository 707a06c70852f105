"""Backends behind small Protocols; factory.py picks the implementations."""
