"""SwiGLU and GeGLU gated activations: public API in api.py, the specification in reference.py."""
