"""The ``medseg`` command line: a thin layer over library functions."""
