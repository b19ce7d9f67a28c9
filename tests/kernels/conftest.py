"""Kernel tests run the Triton kernels on CPU through Triton's interpreter; the variable
must be set before any kernel is decorated (imported)."""

import os

os.environ["TRITON_INTERPRET"] = "1"
