"""Cluster and environment helpers."""
