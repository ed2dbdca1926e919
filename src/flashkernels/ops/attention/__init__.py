"""Flash attention: public API in api.py, the PyTorch specification in reference.py."""
