"""The image library: content-addressed chunks, signed manifests, versions and tags, delta pull."""
