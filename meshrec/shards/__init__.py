"""Human3.6M-style sources → WebDataset tar shards with DALI indexes and a manifest.

adapters (spin, humandata) → SampleTable → pack (crop, encode, tar, .idx, manifest) → verify.
"""
