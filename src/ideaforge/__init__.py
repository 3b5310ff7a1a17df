"""ideaforge: execution-grounded automated AI research.

Importing the package does nothing: no network, no CUDA query, no logging setup.
"""

__version__ = "0.1.0"
