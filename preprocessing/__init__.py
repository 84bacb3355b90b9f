"""Readers for the raw CXR datasets (MIMIC-CXR, Chest ImaGenome, VinDr-CXR, MS-CXR, NIH) and the synthetic generator."""
