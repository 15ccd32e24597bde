"""Dataset discovery, fingerprinting and orchestration of the pipeline's stages."""
