"""RMSNorm (with fused residual add): public API in api.py, the PyTorch specification in reference.py."""
